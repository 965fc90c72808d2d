"""The one place where fleetserve's typed errors become HTTP statuses, gRPC codes and
OpenAI-shaped bodies ``{"error": {"message", "type", "param", "code"}}``.

User input can never produce a 5xx: anything raised while validating a request is an
:class:`InvalidRequestError` (400); only engine failures and bugs reach 500.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import grpc

from fleetserve import errors as E

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorMapping:
    http_status: int
    grpc_code: grpc.StatusCode
    type: str  # OpenAI error "type"


# Most specific class first: lookup walks the exception's MRO.
_MAPPINGS: dict[type, ErrorMapping] = {
    E.ContextLengthError: ErrorMapping(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
    E.InvalidRequestError: ErrorMapping(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
    E.PayloadTooLargeError: ErrorMapping(413, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
    E.AuthenticationError: ErrorMapping(401, grpc.StatusCode.UNAUTHENTICATED, "authentication_error"),
    E.PermissionDeniedError: ErrorMapping(403, grpc.StatusCode.PERMISSION_DENIED, "permission_error"),
    E.ModelNotFoundError: ErrorMapping(404, grpc.StatusCode.NOT_FOUND, "invalid_request_error"),
    E.NotFoundError: ErrorMapping(404, grpc.StatusCode.NOT_FOUND, "invalid_request_error"),
    E.ConflictError: ErrorMapping(409, grpc.StatusCode.ALREADY_EXISTS, "invalid_request_error"),
    E.RateLimitError: ErrorMapping(429, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_error"),
    E.ServiceUnavailableError: ErrorMapping(503, grpc.StatusCode.UNAVAILABLE, "service_unavailable"),
    E.RequestAbortedError: ErrorMapping(499, grpc.StatusCode.CANCELLED, "request_aborted"),
    E.ConfigError: ErrorMapping(500, grpc.StatusCode.INTERNAL, "server_error"),
    E.EngineError: ErrorMapping(500, grpc.StatusCode.INTERNAL, "server_error"),
}
# Ray's errors for an actor that died or cannot be reached (matched by name: no Ray import here).
_REPLICA_LOST = frozenset({"ActorDiedError", "RayActorError", "ActorUnavailableError", "ActorUnschedulableError"})
# Transport errors (by name) that as_fleetserve_error types as a 503: retryable elsewhere.
UNAVAILABLE_TRANSPORT_ERRORS = _REPLICA_LOST | {"BackPressureError", "DeploymentUnavailableError"}
_INTERNAL = ErrorMapping(500, grpc.StatusCode.INTERNAL, "server_error")


def mapping_for(exc: BaseException) -> ErrorMapping:
    for cls in type(exc).__mro__:
        m = _MAPPINGS.get(cls)
        if m is not None:
            return m
    return _INTERNAL


def as_fleetserve_error(exc: BaseException) -> E.FleetserveError:
    """Normalize anything raised while serving into a FleetserveError.

    Ray wraps errors raised in a replica in ``RayTaskError`` subclasses that still derive
    from the original class, so ``isinstance`` works across the DeploymentHandle.
    """
    if isinstance(exc, E.FleetserveError):
        return exc
    name = type(exc).__name__
    if name in ("BackPressureError", "DeploymentUnavailableError"):
        return E.ServiceUnavailableError(f"no replica is ready: {exc}", retry_after_s=1.0)
    if name in _REPLICA_LOST:  # the replica died under the request: retryable, and not a bug here
        return E.ServiceUnavailableError("the replica serving this request was lost", retry_after_s=1.0)
    logger.exception("internal error while serving a request", exc_info=exc)
    return E.EngineError("internal server error")


def retry_after(exc: E.FleetserveError) -> Optional[int]:
    s = getattr(exc, "retry_after_s", None)
    return None if s is None else max(1, math.ceil(s))


def error_body(exc: E.FleetserveError) -> dict[str, Any]:
    m = mapping_for(exc)
    return {"error": {"message": exc.message, "type": m.type, "param": exc.field, "code": exc.code}}


def http_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception raised while serving."""
    err = as_fleetserve_error(exc)
    headers = {}
    ra = retry_after(err)
    if ra is not None:
        headers["Retry-After"] = str(ra)
    return mapping_for(err).http_status, error_body(err), headers


def grpc_error(exc: BaseException) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """(code, details, trailing metadata) for any exception raised while serving."""
    err = as_fleetserve_error(exc)
    meta = [("error-code", err.code)]
    if err.field:
        meta.append(("error-param", err.field))
    ra = retry_after(err)
    if ra is not None:
        meta.append(("retry-after", str(ra)))
    return mapping_for(err).grpc_code, err.message, meta


def validation_error(errors: list[dict]) -> E.InvalidRequestError:
    """A pydantic/FastAPI validation error list as one InvalidRequestError naming the field."""
    if not errors:
        return E.InvalidRequestError("invalid request")
    first = _most_specific(errors)
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    # Union members add their type name to the path ("prompt.str"); keep only real fields.
    param = ".".join(p for p in loc if not _is_type_tag(p)) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return E.InvalidRequestError(f"request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    return E.InvalidRequestError(f"{param}: {msg}" if param else msg, field=param)


def _most_specific(errors: list[dict]) -> dict:
    """The first error, or a deeper one under the same field: a union (content: text or
    parts) reports one error per member, and the deepest names what is actually wrong."""
    head = tuple(errors[0].get("loc", ()))[:1]
    same = [e for e in errors if tuple(e.get("loc", ()))[:1] == head]
    return max(same, key=lambda e: len(e.get("loc", ())))


def _is_type_tag(p: str) -> bool:
    return p in ("str", "int", "float", "bool", "list", "dict", "[key]") or p.startswith(("list[", "function-", "union["))
