"""``fleetserve.v1.Inference``: the gRPC face of :class:`fleetserve.api.service.InferenceService`.

A proto request is turned into the same pydantic request the REST API validates
(``prompt`` -> completion, ``messages`` -> chat; :mod:`.convert`), so bounds, defaults, error
messages, structured outputs, tools and adapters behave as they do over REST. Errors are
mapped by :func:`fleetserve.api.errors.grpc_error`: the code and details are set on the
context and an exception is raised, which both a plain ``grpc.aio`` server and Ray Serve's
gRPC proxy turn into that status.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import AsyncIterator, Optional

from fleetserve.api import openai_format as F
from fleetserve.api import openai_models as M
from fleetserve.api.errors import grpc_error
from fleetserve.api.json_body import check_tree, parse_model
from fleetserve.api.grpc import convert as C
from fleetserve.api.grpc import inference_pb2 as pb
from fleetserve.api.grpc.registration import MalformedMessage
from fleetserve.api.service import InferenceService, Job
from fleetserve.engine.protocol import TokenLogprob
from fleetserve.errors import FleetserveError, InvalidRequestError, PayloadTooLargeError


class GrpcStatusRaised(Exception):
    """Raised after the status was set on the context (ends the RPC with that status)."""


class InferenceServicer:
    def __init__(self, service: InferenceService, max_message_bytes: int = 1 << 20):
        """``max_message_bytes``: the REST body limit, applied to a request message (413's
        gRPC code). Serve's gRPC proxy takes messages up to ``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE``
        bytes (an environment variable of the proxy's process; gRPCOptions has no setting)."""
        self._service = service
        self._max_message_bytes = max_message_bytes

    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        try:
            job = await self._job(request, context)
            async with aclosing(self._service.run(job)) as events:
                choices = await F.collect(events, job.num_choices)
        except BaseException as exc:  # noqa: BLE001 - every error leaves as a status code
            self._fail(context, exc)
        total = sum(c.tokens for c in choices)
        return pb.GenerateResponse(
            id=job.request_id, model=job.model.name, usage=_usage(job, total),
            choices=[C.unary_choice(job, i, "".join(c.text), c.finish_reason, self._logprobs(job, c.logprobs))
                     for i, c in enumerate(choices)],
        )

    async def GenerateStream(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateChunk]:
        try:
            job = await self._job(request, context)
            writer = C.ChunkWriter(job, lambda lps: self._logprobs(job, lps))
            total = 0
            async with aclosing(self._service.run(job)) as events:
                async for ev in events:
                    total += len(ev.output.token_ids_delta)
                    for chunk in writer.chunks(ev):
                        yield chunk
            if not request.HasField("include_usage") or request.include_usage:
                yield pb.GenerateChunk(id=job.request_id, usage=_usage(job, total))
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, GeneratorExit):
                raise
            self._fail(context, exc)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        try:
            ctx = await self._service.authenticate(_bearer(context))
            _parsed(request)
        except BaseException as exc:  # noqa: BLE001
            self._fail(context, exc)
        cards = []
        for name in self._service.model_names():
            if ctx.allowed_models is not None and name not in ctx.allowed_models:
                continue
            served = self._service.loaded(name)
            max_len = served.info.max_model_len if served else 0
            cards.append(pb.ModelCard(id=name, max_model_len=max_len))
            for entry in self._service.adapters.list(name):  # LoRA adapters are models of their own (as REST)
                if ctx.allowed_adapters is None or entry.name in ctx.allowed_adapters:
                    cards.append(pb.ModelCard(id=entry.name, max_model_len=max_len, parent=name))
        return pb.ListModelsResponse(models=cards)

    # ----- helpers -----------------------------------------------------------------------

    async def _job(self, request: pb.GenerateRequest, context) -> Job:
        ctx = None
        try:
            ctx = await self._service.authenticate(_bearer(context))
            _parsed(request)
            if request.ByteSize() > self._max_message_bytes:
                raise PayloadTooLargeError(f"request message exceeds {self._max_message_bytes} bytes")
            kind, data = C.request_body(request)
            check_tree(data)  # the REST body's checks (protobuf already refuses invalid UTF-8)
            req = parse_model(M.ChatCompletionRequest if kind == "chat" else M.CompletionRequest, data)
            self._service.authorize(ctx, req.model)
            if kind == "chat":
                return await F.chat_job(self._service, ctx, req)
            return await F.completion_job(self._service, ctx, req)
        except FleetserveError as exc:
            model = "" if isinstance(request, MalformedMessage) else request.model
            self._service.record_rejection(ctx, model, exc)
            raise

    def _logprobs(self, job: Job, lps: list[TokenLogprob]) -> list[pb.TokenLogprob]:
        r = job.model.renderer
        return [
            pb.TokenLogprob(token_id=lp.token_id, token=r.token_text(lp.token_id), logprob=lp.logprob,
                            top={r.token_text(t): v for t, v in lp.top.items()})
            for lp in lps
        ]

    @staticmethod
    def _fail(context, exc: BaseException):
        code, details, meta = grpc_error(exc)
        context.set_code(code)
        context.set_details(details)
        try:
            context.set_trailing_metadata(meta)
        except Exception:  # Ray's context may refuse metadata on some paths; the code is what matters
            pass
        raise GrpcStatusRaised(details) from None


def _parsed(request) -> None:
    """InvalidRequestError for bytes that did not parse (registration.MalformedMessage)."""
    if isinstance(request, MalformedMessage):
        raise InvalidRequestError(f"the request is not a valid {request.message} message ({request.error})")


def _bearer(context) -> Optional[str]:
    from fleetserve.api.rest import bearer_key

    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return bearer_key(value)
    return None


def _usage(job: Job, completion_tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=job.prompt_tokens, completion_tokens=completion_tokens,
                    total_tokens=job.prompt_tokens + completion_tokens)
