"""OpenAI request -> Job and ChoiceEvent stream -> OpenAI responses / SSE chunks."""

from __future__ import annotations

from typing import AsyncIterator, Optional, Union

from fleetserve.api import openai_models as M
from fleetserve.api.prompts import PromptRenderer
from fleetserve.api.service import ChoiceEvent, InferenceService, Job
from fleetserve.engine.protocol import RequestOutput, TokenLogprob
from fleetserve.tenants.context import TenantContext

AnyRequest = Union[M.CompletionRequest, M.ChatCompletionRequest]


def _sampling(req: AnyRequest, logprobs: Optional[int]) -> dict:
    return dict(
        temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty, seed=req.seed, stop=list(req.stop or []),
        stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos, logprobs=logprobs,
    )


async def completion_job(service: InferenceService, ctx: TenantContext, req: M.CompletionRequest) -> Job:
    model = await service.served(req.model)
    p = req.prompt
    if isinstance(p, str):
        prompts = [model.renderer.encode(p)]
    elif isinstance(p[0], str):
        prompts = [model.renderer.encode(x) for x in p]
    else:
        prompts = [list(p)]
    return service.build_job(ctx, model, prompts, n=req.n, max_tokens=req.max_tokens,
                             sampling=_sampling(req, req.logprobs), prompt_field="prompt")


async def chat_job(service: InferenceService, ctx: TenantContext, req: M.ChatCompletionRequest) -> Job:
    model = await service.served(req.model)
    prompt = model.renderer.render_chat([m.as_template_dict() for m in req.messages])
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return service.build_job(ctx, model, [prompt], n=req.n, max_tokens=req.effective_max_tokens,
                             sampling=_sampling(req, logprobs), prompt_field="messages")


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
            self.finish_reason = _finish(out.finish_reason)


def _finish(reason: Optional[str]) -> Optional[str]:
    return "stop" if reason == "abort" else reason


async def collect(events: AsyncIterator[ChoiceEvent], n: int) -> list[_Choice]:
    choices = [_Choice() for _ in range(n)]
    async for ev in events:
        choices[ev.index].add(ev.output)
    return choices


def completion_response(job: Job, choices: list[_Choice], want_logprobs: bool) -> M.CompletionResponse:
    r = job.model.renderer
    return M.CompletionResponse(
        id=f"cmpl-{job.request_id}", created=job.created, model=job.model.spec.name,
        choices=[
            M.CompletionChoice(index=i, text="".join(c.text), finish_reason=c.finish_reason,
                               logprobs=completion_logprobs(r, c.logprobs, 0) if want_logprobs else None)
            for i, c in enumerate(choices)
        ],
        usage=usage(job, sum(c.tokens for c in choices)),
    )


def chat_response(job: Job, choices: list[_Choice], want_logprobs: bool) -> M.ChatCompletionResponse:
    r = job.model.renderer
    return M.ChatCompletionResponse(
        id=f"chatcmpl-{job.request_id}", created=job.created, model=job.model.spec.name,
        choices=[
            M.ChatChoice(index=i, message=M.AssistantMessage(content="".join(c.text)), finish_reason=c.finish_reason,
                         logprobs=chat_logprobs(r, c.logprobs) if want_logprobs else None)
            for i, c in enumerate(choices)
        ],
        usage=usage(job, sum(c.tokens for c in choices)),
    )


# ----- streaming chunks (JSON strings) ----------------------------------------------------


class CompletionChunker:
    def __init__(self, job: Job, want_logprobs: bool, include_usage: bool):
        self.job, self.want_logprobs, self.include_usage = job, want_logprobs, include_usage
        self._offsets = [0] * job.num_choices
        self.completion_tokens = 0

    def chunk(self, ev: ChoiceEvent) -> Optional[str]:
        out = ev.output
        self.completion_tokens += len(out.token_ids_delta)
        if not out.text_delta and not out.finished and not out.logprobs_delta:
            return None
        lp = None
        if self.want_logprobs:
            lp = completion_logprobs(self.job.model.renderer, out.logprobs_delta or [], self._offsets[ev.index])
        self._offsets[ev.index] += len(out.text_delta)
        c = M.CompletionResponse(
            id=f"cmpl-{self.job.request_id}", created=self.job.created, model=self.job.model.spec.name,
            choices=[M.CompletionChoice(index=ev.index, text=out.text_delta, logprobs=lp,
                                        finish_reason=_finish(out.finish_reason) if out.finished else None)],
        )
        return c.model_dump_json(exclude_none=not self.include_usage)

    def usage_chunk(self) -> Optional[str]:
        if not self.include_usage:
            return None
        c = M.CompletionResponse(id=f"cmpl-{self.job.request_id}", created=self.job.created,
                                 model=self.job.model.spec.name, choices=[], usage=usage(self.job, self.completion_tokens))
        return c.model_dump_json()


class ChatChunker:
    def __init__(self, job: Job, want_logprobs: bool, include_usage: bool):
        self.job, self.want_logprobs, self.include_usage = job, want_logprobs, include_usage
        self._started = [False] * job.num_choices
        self.completion_tokens = 0

    def _chunk(self, choices: list[M.ChatChunkChoice], usage_: Optional[M.Usage] = None) -> str:
        c = M.ChatCompletionChunk(id=f"chatcmpl-{self.job.request_id}", created=self.job.created,
                                  model=self.job.model.spec.name, choices=choices, usage=usage_)
        return c.model_dump_json(exclude_none=False) if self.include_usage else c.model_dump_json(exclude={"usage"})

    def chunk(self, ev: ChoiceEvent) -> list[str]:
        out = ev.output
        self.completion_tokens += len(out.token_ids_delta)
        chunks = []
        if not self._started[ev.index]:
            self._started[ev.index] = True
            chunks.append(self._chunk([M.ChatChunkChoice(index=ev.index, delta=M.ChatDelta(role="assistant", content=""))]))
        if out.text_delta or out.finished or out.logprobs_delta:
            lp = chat_logprobs(self.job.model.renderer, out.logprobs_delta or []) if self.want_logprobs else None
            delta = M.ChatDelta(content=out.text_delta) if out.text_delta else M.ChatDelta()
            chunks.append(self._chunk([M.ChatChunkChoice(index=ev.index, delta=delta, logprobs=lp,
                                                         finish_reason=_finish(out.finish_reason) if out.finished else None)]))
        return chunks

    def usage_chunk(self) -> Optional[str]:
        if not self.include_usage:
            return None
        return self._chunk([], usage(self.job, self.completion_tokens))
