"""A/B routes: ``POST /v1/feedback`` (tenant key) and ``GET /admin/ab/{model}`` (admin key).

Both check the key before reading anything else (body, query, model), as the inference
routes do. Feedback is accepted only for a response id the same tenant received; any other
id, including another tenant's, is a 404, so ids never reveal that they exist.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from fleetserve.api import openapi
from fleetserve.api.json_body import parse_model, parse_object, read_body
from fleetserve.errors import ServiceUnavailableError
from fleetserve.tenants.store import STORE_ERRORS

MAX_SCORE = 1e6
Score = Annotated[Union[StrictInt, StrictFloat], Field(ge=-MAX_SCORE, le=MAX_SCORE)]


class FeedbackRequest(BaseModel):
    """Body of POST /v1/feedback: one outcome for one response."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128,
                    description="The `id` of a completion or chat completion response this key received "
                    "(`chatcmpl-...`, `cmpl-...`).")
    outcome: Union[StrictBool, Score] = Field(
        description="true/false (counts towards the variant's positive-feedback rate, which the A/B z-test "
        "compares) or a finite number in [-1e6, 1e6] (a score; the report shows its mean).")


class FeedbackResponse(BaseModel):
    id: str = Field(description="The response id the feedback was recorded for.")
    object: Literal["feedback"] = "feedback"
    model: str = Field(description="The model alias that served the response.")
    version: str = Field(description="The model version (A/B variant) that served it.")
    outcome: Union[bool, float] = Field(description="The outcome as recorded.")


class ABQuery(BaseModel):
    """Query of GET /admin/ab/{model}; unset values come from the ``canary.ab`` config."""

    model_config = ConfigDict(extra="forbid")

    alpha: Optional[float] = Field(None, gt=0, lt=1, description="Significance level of the z-test.")
    power: Optional[float] = Field(None, gt=0, lt=1, description="Power the sample size is computed for.")
    mde: Optional[float] = Field(None, gt=0, lt=1, description="Minimum detectable effect (absolute rate change).")
    control: Optional[str] = Field(None, min_length=1, max_length=64,
                                   description="Control version; default: the model's stable version.")


AB_BODY_MODELS = (FeedbackRequest,)
FEEDBACK_MAX_BODY_BYTES = 16 * 1024


def _query_params() -> dict:
    params = []
    for name, f in ABQuery.model_fields.items():
        kind = "string" if name == "control" else "number"
        params.append({"name": name, "in": "query", "required": False, "description": f.description,
                       "schema": {"type": kind}})
    return {"parameters": params}


def build_ab_router(service, *, feedback: bool = True, report: bool = True) -> APIRouter:
    """``service``: the :class:`fleetserve.api.service.InferenceService` (its ``ab`` recorder);
    ``feedback``/``report``: mount the tenant route and/or the admin route (split when the
    admin API has its own port)."""
    router = APIRouter()
    if feedback:
        _add_feedback_route(router, service)
    if report:
        _add_report_route(router, service)
    return router


def _add_feedback_route(router: APIRouter, service) -> None:
    @router.post("/v1/feedback", response_model=FeedbackResponse, summary="Feedback on a response (A/B outcome).",
                 openapi_extra=openapi.json_body(FeedbackRequest),
                 responses=openapi.errors(400, 401, 404, 409, 413, 503))
    async def feedback(request: Request) -> FeedbackResponse:
        body = await read_body(request, FEEDBACK_MAX_BODY_BYTES)
        ctx = await service.authenticate(_bearer(request))
        req = parse_model(FeedbackRequest, parse_object(body))
        outcome = req.outcome if isinstance(req.outcome, bool) else float(req.outcome)
        try:
            served = await service.ab.feedback(ctx.tenant_id, req.id, outcome)
        except STORE_ERRORS as exc:
            raise ServiceUnavailableError(f"the feedback store is unreachable ({type(exc).__name__})") from exc
        return FeedbackResponse(id=req.id, model=served.model, version=served.version, outcome=outcome)


def _add_report_route(router: APIRouter, service) -> None:
    @router.get("/admin/ab/{model}", summary="A/B report of a model's versions (admin key).", tags=["admin"],
                openapi_extra=_query_params(), responses=openapi.errors(400, 401, 403, 404, 503))
    async def ab_report(model: str, request: Request) -> dict:
        await service.gatekeeper.authenticate_admin(_bearer(request))
        query = parse_model(ABQuery, dict(request.query_params))
        stable = service.spec(model).version  # 404 for an unknown model
        try:
            report = await service.ab.report(model, query.control or stable, alpha=query.alpha, power=query.power,
                                             mde=query.mde)
        except STORE_ERRORS as exc:
            raise ServiceUnavailableError(f"the A/B store is unreachable ({type(exc).__name__})") from exc
        return {**report.to_dict(), "stable": stable, "drift": service.ab.drift_report(model)}


def _bearer(request: Request) -> Optional[str]:
    from fleetserve.api.rest import bearer_key  # rest mounts this router

    return bearer_key(request.headers.get("authorization"))
