"""The served OpenAPI spec (``/openapi.json``) as the API contract.

The inference and admin handlers read the raw body (the API key is checked before any
parsing, and the body is bounded while it is read), so FastAPI cannot see their bodies.
Routes therefore declare them with :func:`json_body`, which points at a component schema;
:func:`install` fills the components from the very pydantic models that validate the
bodies, gives every declared error status (4xx/5xx) the OpenAI error body, replaces
FastAPI's unused 422 with our 400, and declares bearer authentication.
"""

from __future__ import annotations

from typing import Iterable, Optional

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"

ERRORS = {
    400: "Invalid request: `error.param` names the field (JSON, schema, Unicode, nesting, lengths, context).",
    401: "Missing or invalid API key.",
    403: "The key may not use this model or endpoint.",
    404: "Unknown model or resource.",
    409: "The resource already exists.",
    413: "Request body too large.",
    429: "Over the tenant's quota or shed under overload; `Retry-After` says when to retry.",
    500: "The engine failed on this request (never caused by the request's content).",
    503: "No replica ready, a dependency is down, or the replica ended the request before it finished; "
         "`Retry-After` says when to retry.",
}


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong.")
    type: str = Field(description="OpenAI error type, e.g. invalid_request_error, rate_limit_error.")
    param: Optional[str] = Field(None, description="The offending field, dotted (messages.0.content).")
    code: Optional[str] = Field(None, description="Machine-readable code, e.g. context_length_exceeded.")


class ErrorResponse(BaseModel):
    """The OpenAI error body of every 4xx/5xx response (and of an in-band SSE error event)."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int, dict]:
    """FastAPI ``responses=`` for these error statuses (their body schema is filled by install)."""
    return {s: {"description": ERRORS[s]} for s in statuses}


def json_body(model_cls: type[BaseModel]) -> dict:
    """``openapi_extra`` declaring a required JSON body validated by ``model_cls``."""
    schema = {"$ref": REF.format(model=model_cls.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def streamed_ok(chunk_model: type[BaseModel]) -> dict[int, dict]:
    """The 200 response of an endpoint that streams with ``stream: true``."""
    desc = ("With `stream: true`, server-sent events: one `data: <chunk>` per chunk (schema in `x-sse-data`), "
            "an in-band `data: {\"error\": ...}` event if the request fails after streaming began (each unfinished "
            "choice then ends with a chunk whose finish_reason is `error`), then `data: [DONE]`.")
    return {200: {"description": "The completion, or its event stream.", "content": {"text/event-stream": {
        "schema": {"type": "string", "description": desc, "x-sse-data": {"$ref": REF.format(model=chunk_model.__name__)}},
    }}}}


def install(app: FastAPI, body_models: Iterable[type[BaseModel]], response_models: Iterable[type[BaseModel]] = (),
            public_paths: Iterable[str] = ()) -> None:
    """Serve the contract: ``app.openapi()`` builds it once, as the module docstring says."""
    bodies, responses, public = list(body_models), list(response_models), set(public_paths)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _add_components(schema, bodies, responses)
            _fill_operations(schema, public)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _add_components(schema: dict, bodies: list, responses: list) -> None:
    pairs = [(m, "validation") for m in bodies] + [(m, "serialization") for m in [*responses, ErrorResponse]]
    _, defs = models_json_schema(pairs, ref_template=REF)
    components = schema.setdefault("components", {})
    named = components.setdefault("schemas", {})
    for name, s in defs.get("$defs", {}).items():
        named.setdefault(name, s)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                "description": "A tenant API key, or the admin key on /admin routes."}}


def _fill_operations(schema: dict, public: set[str]) -> None:
    error_content = {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:  # validation failures are 400s here (api/errors.py)
                del responses["422"]
                responses.setdefault("400", {"description": ERRORS[400]})
            for status, resp in responses.items():
                if status[0] in "45" and "content" not in resp:
                    resp["content"] = error_content
            op["security"] = [] if path in public else [{"bearer": []}]
    named = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        named.pop(unused, None)
