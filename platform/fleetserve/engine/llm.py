"""The offline API, shaped like vLLM's::

    from fleetserve import LLM, SamplingParams
    llm = LLM(model="/path/to/ckpt", num_kv_blocks=256)
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=8))
    out[0].outputs[0].text, out[0].outputs[0].token_ids, out[0].prompt_token_ids
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Union

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.core.llm_engine import LLMEngine
from fleetserve.engine.protocol import GenerateRequest, LoraRef, TokenLogprob
from fleetserve.engine.core.runner_types import ModelRunnerProtocol
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.tokenizer import Tokenizer
from fleetserve.errors import InvalidRequestError

PromptType = Union[str, Sequence[int], dict]


@dataclass
class CompletionOutput:
    """One completion of a prompt (vLLM's ``CompletionOutput``)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    logprobs: Optional[list[TokenLogprob]] = None
    error: Optional[str] = None

    @property
    def cumulative_logprob(self) -> Optional[float]:
        return sum(lp.logprob for lp in self.logprobs) if self.logprobs else None


@dataclass
class LLMOutput:
    """All completions of one prompt (vLLM's ``RequestOutput``)."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_cached_tokens: int = 0
    finished: bool = True


class LLM:
    """Offline batch generation on fleetserve's engine. ``engine_kwargs`` are EngineConfig
    fields; ``runner``/``tokenizer`` may be injected (tests)."""

    def __init__(
        self,
        model: str,
        *,
        runner: Optional[ModelRunnerProtocol] = None,
        tokenizer: Optional[Tokenizer] = None,
        **engine_kwargs,
    ):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_kwargs), runner=runner, tokenizer=tokenizer)
        self._ids = itertools.count()

    def get_tokenizer(self) -> Optional[Tokenizer]:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        *,
        priority: Optional[Sequence[int]] = None,
        use_tqdm: bool = False,  # accepted for vLLM compatibility; no progress bar here
        lora_request: Union[LoraRef, Sequence[Optional[LoraRef]], None] = None,
    ) -> list[LLMOutput]:
        """Generate for every prompt; results come back in the prompts' order. ``lora_request``
        (vLLM's name): one adapter for all prompts, or one (or None) per prompt."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(sampling_params, len(prompt_list))
        prios = list(priority) if priority is not None else [0] * len(prompt_list)
        loras = list(lora_request) if isinstance(lora_request, (list, tuple)) else [lora_request] * len(prompt_list)
        if len(prios) != len(prompt_list) or len(loras) != len(prompt_list):
            raise InvalidRequestError("priority and lora_request need one entry per prompt", field="priority")
        results = []
        try:
            for prompt, params, prio, lora in zip(prompt_list, params_list, prios, loras):
                results.append(self._add(prompt, params, prio, lora))
            self._run_to_completion(results)
        except BaseException:
            # A bad prompt (or Ctrl-C) must not leave the others running in the engine.
            for rid in list(self.engine.scheduler.requests):
                self.engine.abort(rid)
            raise
        return [r for r, _ in results]

    def chat(
        self,
        messages: Union[list[dict], Sequence[list[dict]]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        *,
        add_generation_prompt: bool = True,
    ) -> list[LLMOutput]:
        """Generate replies to one conversation (a list of messages) or a list of them."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer", field="messages")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [
            {"prompt": tokenizer.render_chat(conv, add_generation_prompt),
             "prompt_token_ids": tokenizer.apply_chat_template(conv, add_generation_prompt)}
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params)

    # ---------------------------------------------------------------- internals
    def _add(self, prompt: PromptType, params: SamplingParams, priority: int, lora: Optional[LoraRef] = None):
        text, ids = _split_prompt(prompt)
        base = str(next(self._ids))
        request_ids = []
        for i in range(params.n):
            # n completions are n engine requests; seeded ones get seeds seed+i so each
            # completion is reproducible on its own.
            sub = replace(params, n=1, seed=None if params.seed is None else params.seed + i)
            rid = f"{base}-{i}" if params.n > 1 else base
            req = GenerateRequest(rid, sub, prompt=text if ids is None else None, prompt_token_ids=ids, priority=priority,
                                  lora=lora)
            request = self.engine.add_request(req)
            request_ids.append(rid)
            ids = request.prompt_token_ids  # tokenize a text prompt once, not n times
            ids_for_output = ids
        out = LLMOutput(base, text, list(ids_for_output), [CompletionOutput(i) for i in range(params.n)])
        return out, request_ids

    def _run_to_completion(self, results) -> None:
        by_rid: dict[str, tuple[LLMOutput, CompletionOutput]] = {}
        for out, rids in results:
            for i, rid in enumerate(rids):
                by_rid[rid] = (out, out.outputs[i])
        pending = set(by_rid)
        while pending:
            for delta in self.engine.step():
                entry = by_rid.get(delta.request_id)
                if entry is None:
                    continue
                out, comp = entry
                comp.text += delta.text_delta
                comp.token_ids.extend(delta.token_ids_delta)
                if delta.logprobs_delta:
                    comp.logprobs = (comp.logprobs or []) + delta.logprobs_delta
                if delta.finished:
                    comp.finish_reason = delta.finish_reason
                    comp.error = delta.error
                    out.num_cached_tokens = max(out.num_cached_tokens, delta.cached_prompt_tokens)
                    pending.discard(delta.request_id)
            if pending and not self.engine.has_unfinished():
                raise RuntimeError(f"engine idle with {len(pending)} requests unfinished")


def _as_prompt_list(prompts) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # a single prompt given as token ids
    return prompts


def _as_params_list(params, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise InvalidRequestError(f"{len(params)} sampling params for {n} prompts", field="sampling_params")
    return params


def _split_prompt(prompt: PromptType) -> tuple[Optional[str], Optional[list[int]]]:
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, dict):
        ids = prompt.get("prompt_token_ids")
        return prompt.get("prompt"), (list(ids) if ids is not None else None)
    return None, list(prompt)
