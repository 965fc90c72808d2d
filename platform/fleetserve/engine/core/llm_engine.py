"""The synchronous engine: ``step()`` = schedule -> runner.execute -> sample -> postprocess.

Not thread-safe: one thread drives it at a time (the offline ``LLM``, or ``AsyncEngine``'s
loop thread and the lane it hands steps to). ``validate`` alone only reads immutable state,
so other threads may call it. ``step(between_layers=fn)`` lets ``fn`` run ``add_request`` and
``side_step`` while the step's forward pass is paused between layers; nothing else may be
called there.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from fleetserve.clock import Clock, SystemClock
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.core.detokenizer import IncrementalDetokenizer
from fleetserve.engine.core.kv_budget import KVBudget, plan_kv_budget
from fleetserve.engine.core.kv_cache_manager import KVCacheManager, KVSlotUsage
from fleetserve.engine.core.postprocess import Postprocessor
from fleetserve.engine.lora.manager import LoraManager
from fleetserve.engine.protocol import EngineStats, GenerateRequest, LoraRef, RequestOutput
from fleetserve.engine.core.request import Request, RequestStatus
from fleetserve.engine.core.runner_types import ModelInput, ModelRunnerProtocol, SeqBatchItem
from fleetserve.engine.core.sampler import Sampler
from fleetserve.engine.core.scheduler import ScheduledItem, Scheduler, SchedulerOutput
from fleetserve.engine.core.step_timings import StepTimings
from fleetserve.engine.core.structured import GrammarBatch, GrammarCompiler, GrammarState
from fleetserve.engine.tokenizer import Tokenizer, load_tokenizer
from fleetserve.engine.validation import validate_request
from fleetserve.errors import InvalidRequestError

log = logging.getLogger(__name__)

RunnerFactory = Callable[[EngineConfig], ModelRunnerProtocol]


def default_runner_factory(config: EngineConfig) -> ModelRunnerProtocol:
    from fleetserve.engine.model.runner import ModelRunner

    return ModelRunner(config)


class LLMEngine:
    def __init__(
        self,
        config: EngineConfig,
        runner: Optional[ModelRunnerProtocol] = None,
        tokenizer: Optional[Tokenizer] = None,
        *,
        runner_factory: Optional[RunnerFactory] = None,
        clock: Optional[Clock] = None,
    ):
        self.config = config
        self.clock = clock or SystemClock()
        self.runner = runner if runner is not None else (runner_factory or default_runner_factory)(config)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model)
        self.max_model_len = min(config.max_model_len or self.runner.max_model_len, self.runner.max_model_len)
        self.budget: KVBudget = plan_kv_budget(config, self.runner.kv_bytes_per_block(), self.max_model_len)
        self.runner.allocate_kv_cache(self.budget.num_blocks, self.budget.num_host_blocks)
        self.kv = KVCacheManager(
            self.budget.num_blocks,
            config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            num_host_blocks=self.budget.num_host_blocks,
        )
        self.scheduler = Scheduler(
            self.kv,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            preemption_mode=config.preemption_mode,
            isolate_priority_prefill=config.isolate_priority_prefill,
            max_consecutive_isolated=config.max_consecutive_isolated_steps,
            side_prefill=config.interleave_priority_prefill and self.runner.supports_between_layers,
            same_class_side_prefill_max=config.interleave_same_class_max_priority,
        )
        self.sampler = Sampler(config.seed)
        self.eos_token_ids = self._eos_token_ids()
        self.post = Postprocessor(self.eos_token_ids, self.max_model_len)
        self.timings = StepTimings()
        self.num_finished = 0
        self.generated_tokens_total = 0
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._grammar_compiler: Optional[GrammarCompiler] = None  # built on first use
        # Ids of unfinished requests with a grammar: when empty, sampling skips the per-row
        # grammar check altogether (the unconstrained path does no extra work).
        self._grammar_ids: set[str] = set()
        self.last_scheduler_output: Optional[SchedulerOutput] = None
        self.lora: Optional[LoraManager] = None if not config.enable_lora else LoraManager(
            self.runner.max_loras, lambda slot, ref: self.runner.load_lora(slot, ref.path), self.runner.clear_lora)

    def _eos_token_ids(self) -> list[int]:
        ids = list(self.runner.eos_token_ids)
        if not ids and self.tokenizer is not None:
            ids = list(self.tokenizer.eos_token_ids)
        return ids

    # ---------------------------------------------------------------- requests
    @property
    def kv_capacity_tokens(self) -> int:
        return self.budget.num_blocks * self.config.block_size

    def validate(self, req: GenerateRequest) -> tuple[list[int], int]:
        """Prompt token ids and the effective max_tokens; raises a typed error naming the
        field when the request can never be served."""
        return validate_request(
            req,
            tokenizer=self.tokenizer,
            vocab_size=self.runner.vocab_size,
            max_model_len=self.max_model_len,
            kv_capacity_tokens=self.kv_capacity_tokens,
        )

    def add_request(self, req: GenerateRequest) -> Request:
        if req.request_id in self.scheduler.requests:
            raise InvalidRequestError(f"request_id {req.request_id!r} is already running", field="request_id")
        prompt_ids, max_tokens = self.validate(req)
        request = Request(
            req.request_id,
            prompt_ids,
            req.params,
            max_tokens=max_tokens,
            arrival_time=req.arrival_time if req.arrival_time is not None else self.clock.now(),
            priority=req.priority,
            salt=req.cache_salt,
            tenant_id=req.tenant_id,
            resume_token_ids=req.resume_token_ids,
            lora_key=req.lora.key if req.lora is not None else None,
        )
        detok = None
        if self.tokenizer is not None:
            detok = IncrementalDetokenizer(self.tokenizer, prompt_ids, req.params)
            detok.replay(req.resume_token_ids)
        if req.params.structured is not None:
            request.grammar = self._new_grammar(req)
            request.grammar.fast_forward(req.resume_token_ids)
            self._grammar_ids.add(request.request_id)
        if detok is not None:
            self._detok[request.request_id] = detok
        if req.lora is not None:  # last: nothing after it may fail while the adapter is pinned
            request.lora_slot = self._pin_adapter(request, req.lora)
        self.scheduler.add(request)
        return request

    # ---------------------------------------------------------------- LoRA adapters
    def _lora_manager(self) -> LoraManager:
        if self.lora is None:
            raise InvalidRequestError("this model serves no LoRA adapters (enable_lora is off)", field="model")
        return self.lora

    def _pin_adapter(self, request: Request, ref: LoraRef) -> int:
        """The adapter's slot, pinned; a refusal (all slots busy, bad files) undoes add_request's setup."""
        try:
            return self._lora_manager().acquire(ref)
        except Exception:
            self._detok.pop(request.request_id, None)
            self._grammar_ids.discard(request.request_id)
            raise

    def add_adapter(self, ref: LoraRef) -> dict:
        """Load ``ref`` into a slot now (validates its files against the model)."""
        return {"name": ref.name, "revision": ref.revision, "slot": self._lora_manager().preload(ref)}

    def remove_adapter(self, name: str) -> int:
        return self._lora_manager().remove(name)

    def list_adapters(self) -> list[dict]:
        return [a.to_dict() for a in self.lora.resident()] if self.lora is not None else []

    @property
    def grammar_compiler(self) -> GrammarCompiler:
        """The compiled-grammar cache for this engine's tokenizer (built on first use)."""
        if self._grammar_compiler is None:
            self._grammar_compiler = GrammarCompiler(self.tokenizer.hf, self.runner.vocab_size, self.eos_token_ids)
        return self._grammar_compiler

    def _new_grammar(self, req: GenerateRequest) -> GrammarState:
        if self.tokenizer is None:
            raise InvalidRequestError("structured outputs need a tokenizer; this engine has none",
                                      field="response_format")
        return self.grammar_compiler.matcher(req.params.structured)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, request_id: str) -> Optional[RequestOutput]:
        """End a request; returns its final output (None if unknown or already finished)."""
        request = self.scheduler.abort(request_id)
        if request is None:
            return None
        return self._finish_output(request, [], None)

    def preempt(self, request_id: str) -> bool:
        return self.scheduler.preempt(request_id)

    # ---------------------------------------------------------------- the step
    @property
    def supports_side_steps(self) -> bool:
        """Whether ``step(between_layers=...)`` may run ``side_step`` (the runner can pause a
        forward pass between layers and interleaving is configured)."""
        return self.scheduler.side_prefill

    def step(self, between_layers: Optional[Callable[[], None]] = None) -> list[RequestOutput]:
        """One iteration. ``between_layers`` (only with ``supports_side_steps``) is called
        between layers of the forward pass; it may call ``add_request`` and ``side_step``."""
        t0 = time.perf_counter()
        sched = self.scheduler.schedule()
        self.last_scheduler_output = sched  # for invariant checks and debugging
        t1 = time.perf_counter()
        self.timings.schedule_s += t1 - t0
        if sched.is_empty:
            return []
        return self._run(sched, between_layers if self.supports_side_steps else None, self.timings)

    def side_step(self) -> list[RequestOutput]:
        """While ``step``'s forward pass is paused between layers: start the waiting requests
        of a better class than some running one (``Scheduler.schedule_side_prefill``) in a
        prefill step of their own, and return their outputs (first tokens). Returns [] when
        none qualifies. A failure fails only these requests."""
        sched = self.scheduler.schedule_side_prefill()
        if sched.is_empty:
            return []
        try:
            return self._run(sched, None, None)
        except Exception as exc:  # noqa: BLE001 - the paused step must go on
            log.exception("side prefill step failed")
            return [self._fail(it.request, f"{type(exc).__name__}: {exc}") for it in sched.items
                    if it.request.status is RequestStatus.RUNNING]

    def _run(self, sched: SchedulerOutput, between_layers: Optional[Callable[[], None]],
             timings: Optional[StepTimings]) -> list[RequestOutput]:
        """Execute a scheduled step: swaps, forward pass, sampling, postprocessing."""
        t1 = time.perf_counter()
        self._apply_swaps(sched)
        batch = ModelInput([
            SeqBatchItem(it.token_ids, it.start_pos, self.kv.block_table(it.request.request_id), it.needs_logits,
                         it.request.lora_slot)
            for it in sched.items
        ])
        t2 = time.perf_counter()
        logits, failed = self._execute(batch, sched.items, between_layers)
        t3 = time.perf_counter()
        outputs = [self._fail(it.request, err) for it, err in failed]
        self.scheduler.on_step_done(sched)
        sampled = [it.request for it in sched.items if it.needs_logits and it.request.status is RequestStatus.RUNNING]
        grammar = GrammarBatch.of([r.grammar for r in sampled]) if self._grammar_ids and sampled else None
        samples = self.sampler.sample(logits, sampled, grammar) if sampled else None
        t4 = time.perf_counter()
        if samples is not None:
            outputs.extend(self._postprocess(sampled, samples.token_ids, samples.logprobs))
        t5 = time.perf_counter()
        if timings is not None:
            timings.steps += 1
            timings.prepare_s += t2 - t1
            timings.execute_s += t3 - t2  # includes side steps run between its layers
            timings.sample_s += t4 - t3
            timings.postprocess_s += t5 - t4
        return outputs

    def _apply_swaps(self, sched: SchedulerOutput) -> None:
        # Out before in: a device block freed by a swap-out may be the target of a swap-in.
        if sched.swap_out:
            self.runner.swap_out(sched.swap_out)
        if sched.swap_in:
            self.runner.swap_in(sched.swap_in)

    def _execute(self, batch: ModelInput, items: list[ScheduledItem], between_layers: Optional[Callable[[], None]] = None):
        """Logits for the items that need them. When the batch fails, each item is retried
        alone so that only the requests that fail by themselves are failed (writing the
        same K/V twice is harmless)."""
        try:
            if between_layers is not None:
                return self.runner.execute(batch, between_layers=between_layers), []
            return self.runner.execute(batch), []
        except Exception as exc:  # noqa: BLE001 - isolate the failure below
            log.warning("batch of %d failed (%s); isolating", len(items), exc)
        import torch

        rows, failed = [], []
        for seq, it in zip(batch.items, items):
            try:
                out = self.runner.execute(ModelInput([seq]))
                if it.needs_logits:
                    rows.append(out)
            except Exception as exc:  # noqa: BLE001
                failed.append((it, f"{type(exc).__name__}: {exc}"))
        logits = torch.cat(rows) if rows else torch.empty(0, self.runner.vocab_size)
        return logits, failed

    def _postprocess(self, requests: list[Request], token_ids: list[int], logprobs) -> list[RequestOutput]:
        outputs = []
        for i, request in enumerate(requests):
            try:
                lp = logprobs[i] if logprobs is not None else None
                outputs.append(self._process_token(request, token_ids[i], lp))
            except Exception as exc:  # noqa: BLE001 - one request's failure is its own
                log.exception("postprocessing %s failed", request.request_id)
                outputs.append(self._fail(request, f"{type(exc).__name__}: {exc}"))
        return outputs

    def _process_token(self, request: Request, token_id: int, logprob) -> RequestOutput:
        request.append_token(token_id)
        self.generated_tokens_total += 1
        detok = self._detok.get(request.request_id)
        # A stop token ends the request before its text is decoded: it is never shown.
        status = self.post.check_token(request, token_id)
        if request.grammar is not None and status is None:
            status = self.post.check_grammar(request, token_id)
        if status is None and detok is not None and detok.add_token(token_id) is not None:
            status = RequestStatus.FINISHED_STOPPED
        if status is None:
            status = self.post.check_length(request)
        lps = [logprob] if logprob is not None else None
        if status is not None:
            self.scheduler.finish(request, status)
            return self._finish_output(request, [token_id], lps)
        text = detok.pull_delta(False) if detok is not None else ""
        return RequestOutput(
            request.request_id, text, [token_id], lps,
            prompt_tokens=request.num_prompt_tokens,
            completion_tokens=request.num_output_tokens,
            cached_prompt_tokens=request.num_cached_tokens,
        )

    def _finish_output(self, request: Request, token_ids: list[int], logprobs, error: Optional[str] = None) -> RequestOutput:
        self.num_finished += 1
        self._grammar_ids.discard(request.request_id)
        if request.lora_slot is not None:
            self.lora.release(request.lora_key)
            request.lora_slot = None
        detok = self._detok.pop(request.request_id, None)
        text = ""
        if detok is not None and request.status is not RequestStatus.FINISHED_ERROR:
            text = detok.pull_delta(True)
        return RequestOutput(
            request.request_id, text, token_ids, logprobs,
            finished=True,
            finish_reason=request.finish_reason,
            prompt_tokens=request.num_prompt_tokens,
            completion_tokens=request.num_output_tokens,
            cached_prompt_tokens=request.num_cached_tokens,
            error=error,
        )

    def _fail(self, request: Request, error: str) -> RequestOutput:
        if request.request_id in self.scheduler.requests:
            self.scheduler.finish(request, RequestStatus.FINISHED_ERROR)
        request.status = RequestStatus.FINISHED_ERROR
        request.error = error
        return self._finish_output(request, [], None, error)

    def fail_all(self, error: str) -> list[RequestOutput]:
        """Fail every unfinished request (last resort when a step itself raised)."""
        return [self._fail(r, error) for r in list(self.scheduler.requests.values())]

    def release_kv(self) -> None:
        """Free the KV memory (sleep); unfinished requests will be recomputed after wake."""
        self.scheduler.reset_all_to_waiting()
        self.kv.reset_prefix_cache()
        self.runner.release_kv_cache()

    def restore_kv(self) -> None:
        self.runner.allocate_kv_cache(self.budget.num_blocks, self.budget.num_host_blocks)

    # ---------------------------------------------------------------- introspection
    def kv_slot_usage(self) -> KVSlotUsage:
        """Filled vs allocated KV slots right now (call between steps to track the peak)."""
        return self.kv.slot_usage(self.scheduler.running)

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_waiting=s.num_waiting,
            num_running=s.num_running,
            num_swapped=s.num_swapped,
            kv_blocks_total=self.kv.num_blocks,
            kv_blocks_used=self.kv.num_used_blocks,
            kv_block_size=self.config.block_size,
            kv_bytes_allocated=self.budget.bytes_allocated,
            prefix_cache_queries=self.kv.prefix_queries,
            prefix_cache_hits=self.kv.prefix_hits,
            num_preemptions=s.num_preemptions,
            num_finished=self.num_finished,
            generated_tokens_total=self.generated_tokens_total,
        )
