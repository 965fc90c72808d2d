"""The OpenAI-compatible REST app (FastAPI), built around an :class:`InferenceService`.

Request handling order: body size -> API key (401/403 before any parsing, as OpenAI does)
-> JSON + schema validation (400 naming the field) -> model lookup (404) -> tokenization and
context check (400) -> admission (429/503) -> generation. Every error leaves through
:mod:`fleetserve.api.errors`, so user input can never produce a 5xx.
"""

from __future__ import annotations

import json
import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetserve.api import openai_format as F
from fleetserve.api import openai_models as M
from fleetserve.api import openapi
from fleetserve.api.ab_routes import AB_BODY_MODELS, FeedbackResponse, build_ab_router
from fleetserve.api.admin_guard import AdminGuard
from fleetserve.api.drain_routes import build_drain_router
from fleetserve.api.errors import error_body, http_error, validation_error
from fleetserve.api.json_body import parse_model, parse_object, read_body, read_model
from fleetserve.api.service import ChoiceEvent, InferenceService
from fleetserve.api.tokenize_routes import BODY_MODELS as TOKENIZE_BODY_MODELS
from fleetserve.api.tokenize_routes import build_tokenize_router
from fleetserve.api.sse_response import BoundedSendStreamingResponse
from fleetserve.errors import FleetserveError
from fleetserve.deployments.replica_control import ReplicaControl
from fleetserve.tenants.admin_routes import ADMIN_BODY_MODELS, build_admin_router
from fleetserve.api.scaling_routes import ScalingControl, build_scaling_router

logger = logging.getLogger(__name__)

GENERATE_ERRORS = (400, 401, 403, 404, 413, 429, 500, 503)


def bearer_key(authorization: Optional[str]) -> Optional[str]:
    """The key of an ``Authorization: Bearer <key>`` header (None when absent or malformed)."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


Surface = Literal["all", "tenant", "admin"]


def build_rest_app(service: InferenceService, *, max_body_bytes: int = 1 << 20, title: str = "fleetserve",
                   control: Optional[ReplicaControl] = None, routers: tuple = (),
                   scaling: Optional[ScalingControl] = None, body_models: tuple = (), surface: Surface = "all",
                   stream_send_timeout_s: Optional[float] = 30.0) -> FastAPI:
    """``control``: reaches single replicas for the admin drain endpoints (none: not served);
    ``routers``: more admin routers to mount (the model versions' ones, built by the application);
    ``scaling``: the scaling controller (none: ``/admin/scaling`` and ``/admin/replicas`` not served);
    ``body_models``: the mounted routers' request bodies, added to the OpenAPI components;
    ``surface``: 'all' (one port), or the 'tenant' (no /admin/*) and 'admin' (only /admin/* and
    /health) halves for when the admin API has its own port (``server.admin_port``);
    ``stream_send_timeout_s``: how long one SSE write may wait for a client (api/sse_response.py)."""
    app = FastAPI(title=title if surface != "admin" else f"{title} admin", version="1",
                  description="OpenAI-compatible LLM serving on Ray Serve.")
    _install_error_handlers(app)
    admin_auth = service.gatekeeper.authenticate_admin if surface != "tenant" else None
    app.add_middleware(AdminGuard, authenticate_admin=admin_auth,
                       max_body_bytes=max_body_bytes)  # admin key before any /admin/* route reads a body
    _add_ops_routes(app, service)
    bodies, responses = [], [M.ChatCompletionChunk]
    if surface != "admin":
        _add_tenant_routes(app, service, _Limits(max_body_bytes, stream_send_timeout_s))
        bodies += [M.CompletionRequest, M.ChatCompletionRequest, *TOKENIZE_BODY_MODELS, *AB_BODY_MODELS]
        responses.append(FeedbackResponse)
    if surface != "tenant":
        _add_admin_routes(app, service, control, scaling, routers)
        bodies += [*ADMIN_BODY_MODELS, *body_models]
    openapi.install(app, bodies, responses, public_paths=["/health"])
    return app


def _add_tenant_routes(app: FastAPI, service: InferenceService, limits: "_Limits") -> None:
    _add_inference_routes(app, service, limits)
    app.include_router(build_tokenize_router(service, lambda r, cls: read_model(r, cls, limits.max_body_bytes),
                                             lambda r: _authenticate(service, r)))
    app.include_router(build_ab_router(service, report=False))


def _add_admin_routes(app: FastAPI, service: InferenceService, control: Optional[ReplicaControl],
                      scaling: Optional[ScalingControl], routers: tuple) -> None:
    app.include_router(build_admin_router(service.gatekeeper, read_model))
    app.include_router(build_ab_router(service, feedback=False))
    if control is not None:
        app.include_router(build_drain_router(service, control))
    if scaling is not None:
        app.include_router(build_scaling_router(service, scaling))
    for router in routers:
        app.include_router(router)
    _add_status_route(app, service)


def _add_ops_routes(app: FastAPI, service: InferenceService) -> None:
    @app.get("/health", summary="Liveness of the ingress.")
    async def health() -> dict:
        return {"status": "ok", "models": service.model_names()}

    # No /metrics here: the series name tenants, so they live on the private metrics
    # listener (fleetserve.metrics.server; /admin/status lists its address).


@dataclass(frozen=True)
class _Limits:
    max_body_bytes: int
    stream_send_timeout_s: Optional[float]


def _add_inference_routes(app: FastAPI, service: InferenceService, limits: _Limits) -> None:
    @app.get("/v1/models", response_model=M.ModelList, summary="Models this key may use.",
             responses=openapi.errors(401, 503))
    async def list_models(request: Request) -> M.ModelList:
        ctx = await _authenticate(service, request)
        cards = []
        for name in service.model_names():
            if ctx.allowed_models is not None and name not in ctx.allowed_models:
                continue
            served = service.loaded(name)
            cards.append(M.ModelCard(id=name, created=served.created if served else 0,
                                     max_model_len=served.info.max_model_len if served else None))
            for entry in service.adapters.list(name):  # LoRA adapters are models of their own
                if ctx.allowed_adapters is None or entry.name in ctx.allowed_adapters:
                    cards.append(M.ModelCard(id=entry.name, created=served.created if served else 0,
                                             max_model_len=served.info.max_model_len if served else None))
        return M.ModelList(data=cards)

    @app.post("/v1/completions", response_model=M.CompletionResponse, summary="Text completion (OpenAI).",
              openapi_extra=openapi.json_body(M.CompletionRequest),
              responses={**openapi.streamed_ok(M.CompletionResponse), **openapi.errors(*GENERATE_ERRORS)})
    async def completions(request: Request):
        return await _generate(service, request, limits, _Endpoint(
            M.CompletionRequest, F.completion_job, F.completion_response, F.CompletionChunker,
            want_logprobs=lambda r: r.logprobs is not None))

    @app.post("/v1/chat/completions", response_model=M.ChatCompletionResponse, summary="Chat completion (OpenAI).",
              openapi_extra=openapi.json_body(M.ChatCompletionRequest),
              responses={**openapi.streamed_ok(M.ChatCompletionChunk), **openapi.errors(*GENERATE_ERRORS)})
    async def chat_completions(request: Request):
        return await _generate(service, request, limits, _Endpoint(
            M.ChatCompletionRequest, F.chat_job, F.chat_response, F.ChatChunker, want_logprobs=lambda r: r.logprobs))


@dataclass(frozen=True)
class _Endpoint:
    """What differs between the completion and chat endpoints."""

    model_cls: type
    make_job: Callable
    make_response: Callable
    chunker_cls: type
    want_logprobs: Callable


async def _generate(service: InferenceService, request: Request, limits: _Limits, ep: _Endpoint):
    """Body -> key -> JSON -> schema -> model and permission -> job; then run it."""
    ctx, model = None, ""
    try:
        body = await read_body(request, limits.max_body_bytes)
        ctx = await _authenticate(service, request)
        data = parse_object(body)
        model = data.get("model") if isinstance(data.get("model"), str) else ""
        req = parse_model(ep.model_cls, data)
        service.authorize(ctx, req.model)
        job = await ep.make_job(service, ctx, req)
        await _version_pin(service, request, ctx, job)
    except FleetserveError as exc:
        service.record_rejection(ctx, model, exc)
        raise
    lp = bool(ep.want_logprobs(req))
    events = service.run(job)
    if not req.stream:
        async with aclosing(events):
            choices = await F.collect(events, job.num_choices)
        return JSONResponse(ep.make_response(job, choices, lp).model_dump(mode="json"), headers=_version_headers(job))
    # Wait for the first event before answering, so errors raised before generation
    # starts (admission, engine-side validation) still get their real status code.
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        raise
    chunker = ep.chunker_cls(job, lp, req.include_usage)
    return BoundedSendStreamingResponse(_sse(first, events, chunker), send_timeout_s=limits.stream_send_timeout_s,
                                        media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_version_headers(job)})


VERSION_HEADER = "x-fleetserve-version"  # on every response: "<model>@<version>" that served it
ADMIN_KEY_HEADER = "x-fleetserve-admin-key"  # with a tenant's bearer key: lets an admin pin a version


async def _version_pin(service: InferenceService, request: Request, ctx, job) -> None:
    """Carry the pin header to stage 3, which honours it only when the caller may pin: a
    tenant flagged ``may_pin_version``, or a request that also carries the admin key (checked
    only when a pin is sent; a wrong admin key is a 401, never silently ignored)."""
    pinned = request.headers.get(service.versions.pin_header)
    if not pinned:
        return
    job.pinned_version = pinned
    admin_key = request.headers.get(ADMIN_KEY_HEADER)
    if admin_key:
        await service.gatekeeper.authenticate_admin(admin_key)
    job.may_pin = ctx.may_pin_version or bool(admin_key)


def _version_headers(job) -> dict:
    return {VERSION_HEADER: job.fingerprint} if job.fingerprint else {}


async def _authenticate(service: InferenceService, request: Request):
    return await service.authenticate(bearer_key(request.headers.get("authorization")))


def _add_status_route(app: FastAPI, service: InferenceService) -> None:
    @app.get("/admin/status", summary="Models, replicas, queue depth and KV usage (admin key).",
             responses=openapi.errors(401, 403, 503))
    async def admin_status(request: Request) -> dict:
        await service.gatekeeper.authenticate_admin(bearer_key(request.headers.get("authorization")))
        rows = service.replica_status()
        models = []
        for name in service.model_names():
            spec = service.spec(name)
            reps = [r for r in rows if r.model == name]
            models.append({
                "name": name, "version": spec.version, "num_replicas": len(reps),
                "replicas": [
                    {"replica": r.replica, "waiting": r.num_waiting, "running": r.num_running,
                     "kv_usage": round(r.kv_usage, 4), "healthy": r.healthy, "draining": r.draining,
                     "stats_age_s": None if r.age_s is None else round(r.age_s, 2),
                     "transport": "link" if r.link else "handle", "link_streams": r.link_streams,
                     "node_id": r.node_id, "node_ip": r.node_ip, "standby": r.standby,
                     "capacity_type": r.capacity_type, "in_flight": r.in_flight, "metrics": r.metrics,
                     "link_address": r.link_address}
                    for r in reps
                ],
            })
        return {"models": models, "metrics": service.metrics.address}


async def _sse(first: Optional[ChoiceEvent], events: AsyncIterator[ChoiceEvent], chunker) -> AsyncIterator[bytes]:
    def frames(ev: ChoiceEvent) -> list[bytes]:
        out = chunker.chunk(ev)
        items = out if isinstance(out, list) else ([out] if out else [])
        return [f"data: {c}\n\n".encode() for c in items]

    async with aclosing(events):
        try:
            if first is not None:
                for f in frames(first):
                    yield f
            async for ev in events:
                for f in frames(ev):
                    yield f
            u = chunker.usage_chunk()
            if u:
                yield f"data: {u}\n\n".encode()
        except Exception as exc:  # headers are sent: report in-band, as OpenAI does
            _, body, _ = http_error(exc)
            yield f"data: {json.dumps(body)}\n\n".encode()
            for c in chunker.error_chunks():  # and never leave a choice looking complete
                yield f"data: {c}\n\n".encode()
        yield b"data: [DONE]\n\n"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FleetserveError)
    async def _fleet(_req: Request, exc: FleetserveError):
        status, body, headers = http_error(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        err = validation_error(list(exc.errors()))
        return JSONResponse(error_body(err), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        body = {"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None,
                          "code": "not_found" if exc.status_code == 404 else str(exc.status_code)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _any(_req: Request, exc: Exception):
        status, body, headers = http_error(exc)
        return JSONResponse(body, status_code=status, headers=headers)
