"""The vLLM backend: :class:`EngineProtocol` on vLLM's ``AsyncLLM`` (v1 engine).

Chosen per model with ``engine: vllm``. vLLM is imported only when the engine starts, so
fleetserve runs (and its tests collect) without vLLM installed.

Honest differences from the native engine (docs/vllm.md has the full table):
- ``preempt`` always returns False: vLLM has no public call to evict one request.
- ``sleep``/``wake_up`` use vLLM's sleep mode, which needs ``enable_sleep_mode`` and a
  CUDA/ROCm/XPU device; elsewhere they raise :class:`NotSupportedError`.
- ``stats()`` is as of vLLM's last engine step (see ``vllm_stats``).

Requests are validated with the native engine's rules (``engine.validation``) against
vLLM's ``max_model_len`` and KV capacity, so both backends reject the same requests with
the same typed errors, before the first output.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, AsyncIterator, Optional

from fleetserve.engine.protocol import (EngineCapabilities, EngineStats, GenerateRequest, LoraRef, ModelInfo,
                                       RequestOutput)
from fleetserve.engine.tokenizer import Tokenizer
from fleetserve.engine.validation import validate_request
from fleetserve.engine.vllm.convert import (
    apply_env_defaults,
    build_engine_args,
    check_engine_args,
    finish_reason_of,
    map_vllm_error,
    to_token_logprobs,
    to_vllm_sampling_params,
)
from fleetserve.engine.vllm.stats import VllmStatsSink, make_stat_logger_factory
from fleetserve.errors import (
    EngineError,
    FleetserveError,
    InvalidRequestError,
    NotSupportedError,
    ServiceUnavailableError,
)

log = logging.getLogger(__name__)


class VllmEngine:
    """vLLM ``AsyncLLM`` behind fleetserve's engine protocol.

    Construction is cheap and never imports vLLM; :meth:`start` spawns vLLM's engine-core
    process (20-30 s for a tiny model on 2 CPU cores, see docs/vllm.md).
    """

    def __init__(
        self,
        model: str,
        *,
        engine_args: Optional[dict[str, Any]] = None,
        tensor_parallel_size: int = 1,
        served_model_name: Optional[str] = None,
    ):
        self.model = str(model)
        self.engine_args = dict(engine_args or {})
        self.tensor_parallel_size = tensor_parallel_size
        self.served_model_name = served_model_name or os.path.basename(self.model.rstrip("/"))
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._tokenizer: Optional[Tokenizer] = None
        self._info: Optional[ModelInfo] = None
        self._kv_blocks_total = 0
        self._kv_block_size = 16
        self._sink = VllmStatsSink()
        self._active: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._num_finished = 0
        self._draining = False
        self._sleeping = False
        self._start_lock: Optional[asyncio.Lock] = None
        self._lora_ids: dict[str, int] = {}  # LoraRef.key -> vLLM's lora_int_id (>= 1, never reused)
        self._lora_refs: dict[str, LoraRef] = {}

    @classmethod
    def from_config(
        cls,
        model: str,
        engine_args: Optional[dict[str, Any]] = None,
        tensor_parallel_size: int = 1,
        served_model_name: Optional[str] = None,
    ) -> "VllmEngine":
        """What a model config with ``engine: vllm`` builds: checkpoint path, its
        ``engine_args`` (any ``AsyncEngineArgs`` field) and ``tensor_parallel_size``.
        Reserved keys raise ConfigError naming ``engine_args.<key>`` here; keys vLLM does
        not know raise it at :meth:`start` (checking them needs vLLM imported)."""
        check_engine_args(engine_args, tensor_parallel_size)
        return cls(
            model,
            engine_args=engine_args,
            tensor_parallel_size=tensor_parallel_size,
            served_model_name=served_model_name,
        )

    def capabilities(self) -> EngineCapabilities:
        """vLLM streams one output per step (the replica paces it) and cannot preempt one
        request; sleep mode only when ``engine_args.enable_sleep_mode`` asks for it (vLLM
        itself supports it on CUDA/ROCm/XPU devices only)."""
        return EngineCapabilities(
            paces_streams=False,
            supports_preempt=False,
            supports_sleep=bool(self.engine_args.get("enable_sleep_mode", False)),
            supports_lora=bool(self.engine_args.get("enable_lora", False)),
        )

    # ---------------------------------------------------------------- LoRA (vLLM's LoRARequest)
    def _lora_request(self, ref: Optional[LoraRef]):
        """vLLM's ``LoRARequest`` for ``ref``: one int id per name@revision, so new weights
        under an old name are a new adapter to vLLM as well (its prefix cache keys on the id)."""
        if ref is None:
            return None
        if not self.capabilities().supports_lora:
            raise InvalidRequestError("this model serves no LoRA adapters (engine_args.enable_lora is off)",
                                      field="model")
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(ref.key, len(self._lora_ids) + 1)
        self._lora_refs[ref.key] = ref
        return LoRARequest(lora_name=ref.key, lora_int_id=lora_id, lora_path=ref.path)

    async def add_adapter(self, ref: LoraRef) -> dict:
        await self._admit().add_lora(self._lora_request(ref))
        return {"name": ref.name, "revision": ref.revision, "slot": None}

    async def remove_adapter(self, name: str) -> int:
        keys = [k for k, r in self._lora_refs.items() if r.name == name]
        for k in keys:
            await self._admit().remove_lora(self._lora_ids[k])
            del self._lora_refs[k]
        return len(keys)

    async def list_adapters(self) -> list[dict]:
        if self._llm is None or not self.capabilities().supports_lora:
            return []
        loaded = await self._llm.list_loras()
        return [{"name": r.name, "path": r.path, "revision": r.revision, "slot": None, "active_requests": None}
                for k, r in self._lora_refs.items() if self._lora_ids[k] in loaded]

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._llm is not None:
                return
            apply_env_defaults(engine_args=self.engine_args)
            args = build_engine_args(self.model, self.engine_args, self.tensor_parallel_size, self.served_model_name)
            # Starting spawns processes and blocks for the whole model load: keep it off the
            # event loop so a replica stays responsive (its health checks) meanwhile.
            self._llm = await asyncio.to_thread(self._make_llm, args)
            self._load_model_facts()

    def _make_llm(self, args):
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args, stat_loggers=[make_stat_logger_factory(self._sink)])

    def _load_model_facts(self) -> None:
        llm = self._llm
        mc = llm.model_config
        eos = _eos_token_ids(llm)
        self._tokenizer = Tokenizer(llm.get_tokenizer(), eos)
        self._kv_block_size = llm.vllm_config.cache_config.block_size
        self._kv_blocks_total = llm.vllm_config.cache_config.num_gpu_blocks or 0
        self._info = ModelInfo(
            name=self.served_model_name,
            max_model_len=mc.max_model_len,
            vocab_size=mc.get_vocab_size(),
            eos_token_ids=eos,
            has_chat_template=self._tokenizer.has_chat_template,
        )

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            # vLLM's shutdown joins its processes (a few seconds): off the event loop.
            await asyncio.to_thread(llm.shutdown)

    # ---------------------------------------------------------------- requests
    def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        return self._generate(request)

    async def _generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        llm = self._admit()
        prompt_ids, max_tokens = validate_request(
            request,
            tokenizer=self._tokenizer,
            vocab_size=self._info.vocab_size,
            max_model_len=self._info.max_model_len,
            kv_capacity_tokens=self._kv_capacity_tokens(),
        )
        if request.request_id in self._active:
            raise InvalidRequestError(f"request_id {request.request_id!r} is already running", field="request_id")
        if request.resume_token_ids:
            # vLLM has no "output so far": a continuation is a longer prompt with the rest of
            # max_tokens. Greedy continues the same; seeded sampling does not (docs/vllm.md).
            prompt_ids = prompt_ids + list(request.resume_token_ids)
            max_tokens -= len(request.resume_token_ids)
        sampling = to_vllm_sampling_params(request.params, max_tokens)
        prompt: dict[str, Any] = {"prompt_token_ids": prompt_ids}
        if request.prompt is not None and not request.resume_token_ids:
            prompt["prompt"] = request.prompt
        if request.cache_salt is not None:
            prompt["cache_salt"] = request.cache_salt  # vLLM never shares KV across salts

        self._track(request.request_id)
        completion_tokens = 0
        finished = False
        stream = None
        try:
            stream = llm.generate(prompt, sampling, request.request_id, priority=request.priority,
                                  lora_request=self._lora_request(request.lora))
            while not finished:
                try:
                    out = await stream.__anext__()
                except StopAsyncIteration:
                    break
                except FleetserveError:
                    raise
                except Exception as exc:  # vLLM's own errors -> our typed ones
                    raise map_vllm_error(exc) from exc
                completion = out.outputs[0]
                token_ids = list(completion.token_ids)
                completion_tokens += len(token_ids)
                finished = bool(out.finished)
                yield RequestOutput(
                    request_id=request.request_id,
                    text_delta=completion.text,
                    token_ids_delta=token_ids,
                    logprobs_delta=to_token_logprobs(token_ids, completion.logprobs, request.params.logprobs),
                    finished=finished,
                    finish_reason=finish_reason_of(completion.finish_reason) if finished else None,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens,
                    cached_prompt_tokens=out.num_cached_tokens or 0,
                )
        finally:
            if not finished and stream is not None:
                # The consumer went away (or vLLM failed): closing vLLM's stream aborts the
                # request inside vLLM too.
                await _quietly(stream.aclose())
            self._untrack(request.request_id, finished)

    def _admit(self):
        if self._llm is None:
            raise ServiceUnavailableError("the vLLM engine is not started")
        if self._sleeping:
            raise ServiceUnavailableError("the vLLM engine is sleeping")
        if self._draining:
            raise ServiceUnavailableError("the vLLM engine is draining")
        return self._llm

    def _kv_capacity_tokens(self) -> int:
        # Unknown capacity (0) must not reject every prompt: fall back to the context limit.
        return self._kv_blocks_total * self._kv_block_size or self._info.max_model_len

    def _track(self, request_id: str) -> None:
        self._active.add(request_id)
        self._idle.clear()

    def _untrack(self, request_id: str, finished: bool) -> None:
        self._active.discard(request_id)
        if finished:
            self._num_finished += 1
        if not self._active:
            self._idle.set()

    async def abort(self, request_id: str) -> None:
        if self._llm is not None and request_id in self._active:
            # vLLM ends the stream with a final output whose finish_reason is "abort".
            await self._llm.abort(request_id)

    async def preempt(self, request_id: str) -> bool:
        """vLLM has no public call to preempt one request (its scheduler preempts on its own
        when KV runs out, counted in ``stats().num_preemptions``), so nothing is done."""
        return False

    # ---------------------------------------------------------------- introspection
    def stats(self) -> EngineStats:
        sink = self._sink
        busy = bool(self._active)
        return EngineStats(
            num_waiting=sink.num_waiting if busy else 0,
            num_running=sink.num_running if busy else 0,
            kv_blocks_total=self._kv_blocks_total,
            kv_blocks_used=round(sink.kv_cache_usage * self._kv_blocks_total) if busy else 0,
            kv_block_size=self._kv_block_size,
            prefix_cache_queries=sink.prefix_cache_queries,
            prefix_cache_hits=sink.prefix_cache_hits,
            num_preemptions=sink.num_preemptions,
            num_finished=self._num_finished,
            generated_tokens_total=sink.generated_tokens_total,
            healthy=self._llm is not None and not self._llm.errored,
            sleeping=self._sleeping,
            draining=self._draining,
        )

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineError("the vLLM engine is not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineError(f"the vLLM engine is unhealthy: {exc}") from exc

    def model_info(self) -> ModelInfo:
        if self._info is None:
            raise ServiceUnavailableError("the vLLM engine is not started")
        return self._info

    def encode(self, text: str) -> list[int]:
        return self._started_tokenizer().encode(text)

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        return self._started_tokenizer().apply_chat_template(messages)

    def _started_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise ServiceUnavailableError("the vLLM engine is not started")
        return self._tokenizer

    # ---------------------------------------------------------------- warm pools, drain
    async def sleep(self) -> None:
        llm = self._admit_control()
        if not llm.model_config.enable_sleep_mode:
            raise NotSupportedError(
                "vLLM sleep mode is off: it needs engine_args.enable_sleep_mode=true and a "
                "CUDA/ROCm/XPU device (vLLM does not support it on CPU)"
            )
        await llm.sleep(level=1)
        self._sleeping = True

    async def wake_up(self) -> None:
        llm = self._admit_control()
        if not self._sleeping:
            return
        await llm.wake_up()
        self._sleeping = False

    def _admit_control(self):
        if self._llm is None:
            raise ServiceUnavailableError("the vLLM engine is not started")
        return self._llm

    async def drain(self, timeout_s: float) -> int:
        """Stop admitting, then wait up to ``timeout_s`` for in-flight requests; returns how
        many were still running at the deadline (0 when drained)."""
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except asyncio.TimeoutError:
            pass
        return len(self._active)


def _eos_token_ids(llm) -> list[int]:
    """EOS ids vLLM stops on: the tokenizer's plus generation_config's (which may be a list)."""
    ids: list[int] = []
    eos = llm.model_config.try_get_generation_config().get("eos_token_id")
    if eos is not None:
        ids.extend([eos] if isinstance(eos, int) else list(eos))
    tok_eos = getattr(llm.get_tokenizer(), "eos_token_id", None)
    if tok_eos is not None and tok_eos not in ids:
        ids.append(tok_eos)
    return ids


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - best-effort cleanup of an already-failed request
        log.debug("vLLM abort during cleanup failed", exc_info=True)
