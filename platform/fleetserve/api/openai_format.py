"""OpenAI request -> Job and ChoiceEvent stream -> OpenAI responses / SSE chunks."""

from __future__ import annotations

import json
from typing import AsyncIterator, Optional, Union

from fleetserve.api import openai_models as M
from fleetserve.api.prompts import PromptRenderer
from fleetserve.api.service import ChoiceEvent, InferenceService, Job
from fleetserve.api.tool_calls import ToolCallDecoder, assemble, plan_tools
from fleetserve.api.tool_calls import finish_reason as tool_finish
from fleetserve.engine.protocol import RequestOutput, TokenLogprob
from fleetserve.engine.sampling_params import StructuredOutput
from fleetserve.errors import InvalidRequestError
from fleetserve.tenants.context import TenantContext

AnyRequest = Union[M.CompletionRequest, M.ChatCompletionRequest]


def _sampling(req: AnyRequest, logprobs: Optional[int], vocab_size: int,
              structured: Optional[StructuredOutput] = None) -> dict:
    return dict(
        temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty, seed=req.seed, stop=list(req.stop or []),
        stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos, logprobs=logprobs,
        structured=structured or structured_output(req), logit_bias=_logit_bias(req.logit_bias, vocab_size),
        include_stop_str_in_output=req.include_stop_str_in_output,
    )


def _logit_bias(bias: Optional[dict[str, float]], vocab_size: int) -> Optional[dict[int, float]]:
    if not bias:
        return None
    out = {int(k): v for k, v in bias.items()}
    _check_ids(list(out), vocab_size, "logit_bias")
    return out


def structured_output(req: AnyRequest) -> Optional[StructuredOutput]:
    """The one output constraint of ``response_format`` (OpenAI), ``structured_outputs`` or
    the ``guided_*`` fields (vLLM); more than one is a 400."""
    specs = [s for s in (_response_format(req.response_format), _vllm_structured(req.structured_outputs),
                         *_guided(req)) if s is not None]
    if len(specs) > 1:
        raise InvalidRequestError("give one of response_format, structured_outputs and guided_*", field="response_format")
    return specs[0] if specs else None


def _response_format(rf: Optional[M.ResponseFormat]) -> Optional[StructuredOutput]:
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return StructuredOutput("json_object")
    return StructuredOutput.json_schema(rf.json_schema.schema_)


def _vllm_structured(so: Optional[M.StructuredOutputsField]) -> Optional[StructuredOutput]:
    if so is None:
        return None
    given = [k for k in ("json_", "regex", "choice", "grammar", "json_object") if getattr(so, k) not in (None, False)]
    if len(given) != 1:
        raise InvalidRequestError("structured_outputs needs exactly one of json, regex, choice, grammar, json_object",
                                  field="structured_outputs")
    return _spec(given[0].rstrip("_"), getattr(so, given[0]))


def _guided(req: AnyRequest) -> list[Optional[StructuredOutput]]:
    return [_spec(kind, value) for kind, value in (("json", req.guided_json), ("regex", req.guided_regex),
                                                   ("choice", req.guided_choice), ("grammar", req.guided_grammar))
            if value is not None]


def _spec(kind: str, value) -> StructuredOutput:
    if kind == "json":
        return StructuredOutput.json_schema(value)
    if kind == "choice":
        return StructuredOutput("choice", choices=tuple(value))
    if kind == "json_object":
        return StructuredOutput("json_object")
    return StructuredOutput(kind, value)


async def completion_job(service: InferenceService, ctx: TenantContext, req: M.CompletionRequest) -> Job:
    model = await service.served(req.model)
    p = req.prompt
    if isinstance(p, str):
        prompts = [model.renderer.encode(p)]
    elif isinstance(p[0], str):
        prompts = [model.renderer.encode(x) for x in p]
    else:
        prompts = [list(p)]
        _check_ids(prompts[0], model.info.vocab_size, "prompt")
    _check_ids(req.stop_token_ids or [], model.info.vocab_size, "stop_token_ids")
    job = service.build_job(ctx, model, prompts, n=req.n, max_tokens=req.max_tokens,
                            sampling=_sampling(req, req.logprobs, model.info.vocab_size), prompt_field="prompt",
                            user=req.user)
    if req.echo:
        if req.logprobs is not None:
            raise InvalidRequestError("echo with logprobs is not supported (no prompt logprobs)", field="echo")
        job.echo = [p] if isinstance(p, str) else list(p) if isinstance(p[0], str) else [model.renderer.decode(p)]
    return job


def _check_ids(ids: list[int], vocab_size: int, field: str) -> None:
    """Token ids the model has (an id past the vocabulary would fail inside the engine)."""
    if any(t >= vocab_size for t in ids):
        raise InvalidRequestError(f"{field}: token ids must be below the vocabulary size {vocab_size}", field=field)


async def chat_job(service: InferenceService, ctx: TenantContext, req: M.ChatCompletionRequest) -> Job:
    model = await service.served(req.model)
    plan, constraint = plan_tools(req, model.spec.tool_call_parser)
    if constraint is not None and structured_output(req) is not None:
        raise InvalidRequestError("tool_choice required or named cannot be combined with response_format",
                                  field="tool_choice")
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    prompt = model.renderer.render_chat([m.as_template_dict() for m in req.messages], tools=tools,
                                        documents=req.documents, add_generation_prompt=req.add_generation_prompt,
                                        template_kwargs=req.chat_template_kwargs)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    _check_ids(req.stop_token_ids or [], model.info.vocab_size, "stop_token_ids")
    job = service.build_job(ctx, model, [prompt], n=req.n, max_tokens=req.effective_max_tokens,
                            sampling=_sampling(req, logprobs, model.info.vocab_size, constraint),
                            prompt_field="messages", user=req.user)
    job.tool_plan = plan if plan is not None and plan.reads_calls else None
    return job


def usage(job: Job, completion_tokens: int) -> M.Usage:
    return M.Usage(prompt_tokens=job.prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=job.prompt_tokens + completion_tokens)


# ----- logprobs ---------------------------------------------------------------------------


def completion_logprobs(r: PromptRenderer, lps: list[TokenLogprob], offset: int) -> M.CompletionLogprobs:
    out = M.CompletionLogprobs()
    for lp in lps:
        text = r.token_text(lp.token_id)
        out.tokens.append(text)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({r.token_text(t): v for t, v in lp.top.items()})
        out.text_offset.append(offset)
        offset += len(text)
    return out


def chat_logprobs(r: PromptRenderer, lps: list[TokenLogprob]) -> M.ChatLogprobs:
    def entry(tid: int, lp: float) -> dict:
        text = r.token_text(tid)
        return dict(token=text, logprob=lp, bytes=list(text.encode()))

    return M.ChatLogprobs(content=[
        M.ChatTokenLogprob(**entry(lp.token_id, lp.logprob),
                           top_logprobs=[M.TopLogprob(**entry(t, v)) for t, v in lp.top.items()])
        for lp in lps
    ])


# ----- unary responses --------------------------------------------------------------------


class _Choice:
    def __init__(self):
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.finish_reason: Optional[str] = None
        self.tokens = 0

    def add(self, out: RequestOutput) -> None:
        self.text.append(out.text_delta)
        self.tokens += len(out.token_ids_delta)
        if out.logprobs_delta:
            self.logprobs.extend(out.logprobs_delta)
        if out.finished:
            self.finish_reason = out.finish_reason


# A stream that ended in an error closes each unfinished choice with this finish reason,
# so a client that only reads chunks never mistakes a truncated answer for a complete one.
FINISH_ERROR_CHUNK = "error"


async def collect(events: AsyncIterator[ChoiceEvent], n: int) -> list[_Choice]:
    choices = [_Choice() for _ in range(n)]
    async for ev in events:
        choices[ev.index].add(ev.output)
    return choices


def completion_response(job: Job, choices: list[_Choice], want_logprobs: bool) -> M.CompletionResponse:
    r = job.model.renderer
    return M.CompletionResponse(
        id=f"cmpl-{job.request_id}", created=job.created, model=job.model.name,
        choices=[
            M.CompletionChoice(index=i, text=_echo(job, i) + "".join(c.text), finish_reason=c.finish_reason,
                               logprobs=completion_logprobs(r, c.logprobs, 0) if want_logprobs else None)
            for i, c in enumerate(choices)
        ],
        usage=usage(job, sum(c.tokens for c in choices)), system_fingerprint=job.fingerprint,
    )


def _echo(job: Job, index: int) -> str:
    return job.echo[index // job.n] if job.echo else ""


def chat_response(job: Job, choices: list[_Choice], want_logprobs: bool) -> M.ChatCompletionResponse:
    r = job.model.renderer
    return M.ChatCompletionResponse(
        id=f"chatcmpl-{job.request_id}", created=job.created, model=job.model.name,
        choices=[_chat_choice(job, i, c, chat_logprobs(r, c.logprobs) if want_logprobs else None)
                 for i, c in enumerate(choices)],
        usage=usage(job, sum(c.tokens for c in choices)), system_fingerprint=job.fingerprint,
    )


def _chat_choice(job: Job, index: int, c: _Choice, logprobs: Optional[M.ChatLogprobs]) -> M.ChatChoice:
    text = "".join(c.text)
    if job.tool_plan is None:
        return M.ChatChoice(index=index, message=M.AssistantMessage(content=text), finish_reason=c.finish_reason,
                            logprobs=logprobs)
    decoder = ToolCallDecoder(job.tool_plan)
    content, calls = assemble(decoder.feed(text) + decoder.finish())
    message = M.AssistantMessage(content=content, tool_calls=[
        M.AssistantToolCall(id=t.id, function=M.FunctionCall(name=t.name, arguments=t.arguments)) for t in calls
    ] or None)
    return M.ChatChoice(index=index, message=message, finish_reason=tool_finish(c.finish_reason, len(calls)),
                        logprobs=logprobs)


def _fingerprint_tail(job: Job, keep_null: bool) -> str:
    """The end of a fast chunk's JSON after ``usage``, as pydantic writes it: the field comes
    last, and a null one (before stage 3 has chosen) only when nulls are kept."""
    if job.fingerprint is None:
        return ',"system_fingerprint":null' if keep_null else ""
    return ',"system_fingerprint":' + _dumps(job.fingerprint)


# ----- streaming chunks (JSON strings) ----------------------------------------------------


def _dumps(obj) -> str:
    """Compact JSON, byte-identical to pydantic's ``model_dump_json`` for these shapes."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class CompletionChunker:
    """SSE chunks of a streamed completion.

    Chunks without logprobs (nearly all of them) are written with ``json.dumps`` from a
    per-request header instead of building and serialising pydantic models: at one chunk
    per token that was a large share of the ingress's CPU under load. The wire format is
    identical (``tests/api/test_chunk_format.py`` compares both).
    """

    def __init__(self, job: Job, want_logprobs: bool, include_usage: bool):
        self.job, self.want_logprobs, self.include_usage = job, want_logprobs, include_usage
        self._offsets = [0] * job.num_choices
        self._done: set[int] = set()
        self.completion_tokens = 0
        self._head = (f'{{"id":{_dumps("cmpl-" + job.request_id)},"object":"text_completion",'
                      f'"created":{int(job.created)},"model":{_dumps(job.model.name)},"choices":[')
        self._fp = _fingerprint_tail(job, keep_null=include_usage)
        self._echo_pending = set(range(job.num_choices)) if job.echo else set()

    def chunk(self, ev: ChoiceEvent) -> Optional[str]:
        out = ev.output
        self.completion_tokens += len(out.token_ids_delta)
        text = out.text_delta
        if ev.index in self._echo_pending:  # echo: the prompt leads the choice's first chunk
            self._echo_pending.discard(ev.index)
            text = _echo(self.job, ev.index) + text
        if not text and not out.finished and not out.logprobs_delta:
            return None
        finish = out.finish_reason if out.finished else None
        if out.finished:
            self._done.add(ev.index)
        if not self.want_logprobs:
            self._offsets[ev.index] += len(text)
            choice = {"index": ev.index, "text": text}
            if self.include_usage:
                choice["logprobs"] = None
                choice["finish_reason"] = finish
                return self._head + _dumps(choice) + '],"usage":null' + self._fp + "}"
            if finish is not None:
                choice["finish_reason"] = finish
            return self._head + _dumps(choice) + "]" + self._fp + "}"
        lp = completion_logprobs(self.job.model.renderer, out.logprobs_delta or [], self._offsets[ev.index])
        self._offsets[ev.index] += len(out.text_delta)
        c = M.CompletionResponse(
            id=f"cmpl-{self.job.request_id}", created=self.job.created, model=self.job.model.name,
            choices=[M.CompletionChoice(index=ev.index, text=out.text_delta, logprobs=lp, finish_reason=finish)],
            system_fingerprint=self.job.fingerprint,
        )
        return c.model_dump_json(exclude_none=not self.include_usage)

    def usage_chunk(self) -> Optional[str]:
        if not self.include_usage:
            return None
        c = M.CompletionResponse(id=f"cmpl-{self.job.request_id}", created=self.job.created,
                                 model=self.job.model.name, choices=[], usage=usage(self.job, self.completion_tokens),
                                 system_fingerprint=self.job.fingerprint)
        return c.model_dump_json()

    def error_chunks(self) -> list[str]:
        """The last chunk of every choice not finished yet, finish_reason ``error``."""
        chunks = []
        for i in range(self.job.num_choices):
            if i not in self._done:
                c = M.CompletionResponse(id=f"cmpl-{self.job.request_id}", created=self.job.created,
                                         model=self.job.model.name,
                                         choices=[M.CompletionChoice(index=i, text="", finish_reason=FINISH_ERROR_CHUNK)])
                chunks.append(c.model_dump_json(exclude_none=not self.include_usage))
        return chunks


class ChatChunker:
    """SSE chunks of a streamed chat completion (fast path without logprobs, as above)."""

    def __init__(self, job: Job, want_logprobs: bool, include_usage: bool):
        self.job, self.want_logprobs, self.include_usage = job, want_logprobs, include_usage
        self._started = [False] * job.num_choices
        self._done: set[int] = set()
        self.completion_tokens = 0
        self._head = (f'{{"id":{_dumps("chatcmpl-" + job.request_id)},"object":"chat.completion.chunk",'
                      f'"created":{int(job.created)},"model":{_dumps(job.model.name)},"choices":[')
        self._tail = ('],"usage":null' if include_usage else "]") + _fingerprint_tail(job, keep_null=True) + "}"
        plan = job.tool_plan
        self._decoders = [ToolCallDecoder(plan) for _ in range(job.num_choices)] if plan is not None else None

    def _chunk(self, choices: list[M.ChatChunkChoice], usage_: Optional[M.Usage] = None) -> str:
        c = M.ChatCompletionChunk(id=f"chatcmpl-{self.job.request_id}", created=self.job.created,
                                  model=self.job.model.name, choices=choices, usage=usage_,
                                  system_fingerprint=self.job.fingerprint)
        return c.model_dump_json(exclude_none=False) if self.include_usage else c.model_dump_json(exclude={"usage"})

    def _fast(self, index: int, role: Optional[str], content: Optional[str], finish: Optional[str]) -> str:
        choice = {"index": index, "delta": {"role": role, "content": content}, "logprobs": None, "finish_reason": finish}
        return self._head + _dumps(choice) + self._tail

    def chunk(self, ev: ChoiceEvent) -> list[str]:
        out = ev.output
        self.completion_tokens += len(out.token_ids_delta)
        chunks = []
        if not self._started[ev.index]:
            self._started[ev.index] = True
            chunks.append(self._fast(ev.index, "assistant", "", None))
        if not (out.text_delta or out.finished or out.logprobs_delta):
            return chunks
        finish = out.finish_reason if out.finished else None
        if out.finished:
            self._done.add(ev.index)
        if self._decoders is not None:
            return chunks + self._tool_chunks(ev.index, out, finish)
        if not self.want_logprobs:
            chunks.append(self._fast(ev.index, None, out.text_delta or None, finish))
            return chunks
        lp = chat_logprobs(self.job.model.renderer, out.logprobs_delta or [])
        delta = M.ChatDelta(content=out.text_delta) if out.text_delta else M.ChatDelta()
        chunks.append(self._chunk([M.ChatChunkChoice(index=ev.index, delta=delta, logprobs=lp, finish_reason=finish)]))
        return chunks

    def _tool_chunks(self, index: int, out, finish: Optional[str]) -> list[str]:
        """With tools, the text goes through the choice's decoder: content and tool-call
        deltas, logprobs in a chunk of their own, the finish reason last."""
        decoder = self._decoders[index]
        events = decoder.feed(out.text_delta) + (decoder.finish() if out.finished else [])
        chunks = []
        for e in events:
            if isinstance(e, str):
                chunks.append(self._fast(index, None, e, None))
            else:
                delta = M.ToolCallsDelta(tool_calls=[M.ToolCallDelta(
                    index=e.index, id=e.id, type="function" if e.id else None,
                    function=M.FunctionCallDelta(name=e.name, arguments=e.arguments))])
                chunks.append(self._chunk([M.ChatChunkChoice(index=index, delta=delta)]))
        if self.want_logprobs and out.logprobs_delta:
            lp = chat_logprobs(self.job.model.renderer, out.logprobs_delta)
            chunks.append(self._chunk([M.ChatChunkChoice(index=index, delta=M.ChatDelta(), logprobs=lp)]))
        if finish is not None:
            chunks.append(self._fast(index, None, None, tool_finish(finish, decoder.calls)))
        return chunks

    def usage_chunk(self) -> Optional[str]:
        if not self.include_usage:
            return None
        return self._chunk([], usage(self.job, self.completion_tokens))

    def error_chunks(self) -> list[str]:
        """The last chunk of every choice not finished yet, finish_reason ``error``."""
        return [self._fast(i, None, None, FINISH_ERROR_CHUNK) for i in range(self.job.num_choices) if i not in self._done]
