"""Errors across the replica link: an exception becomes a typed :class:`StreamError` on the
replica and the same fleetserve class again at the ingress.

Only the classes below cross, by a fixed name: the ingress never imports or calls a name
read from the wire. Anything else a replica raises crosses as :class:`EngineError` naming
its type (the ingress maps that to a 500, as it would on the replica itself).
"""

from __future__ import annotations

from fleetserve.deployments.link_messages import StreamError
from fleetserve.errors import (
    ConflictError,
    ContextLengthError,
    EngineError,
    FleetserveError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    NotSupportedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ReplicaStreamLost,
    RequestAbortedError,
    ServiceUnavailableError,
)

# Wire name -> class. Subclasses come before their bases only for reading; the lookup on
# the replica walks the exception's MRO, so the nearest listed class wins.
ALLOWED: dict[str, type[FleetserveError]] = {
    "invalid_request": InvalidRequestError,
    "context_length": ContextLengthError,
    "payload_too_large": PayloadTooLargeError,
    "permission_denied": PermissionDeniedError,
    "model_not_found": ModelNotFoundError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "rate_limited": RateLimitError,
    "unavailable": ServiceUnavailableError,
    "stream_lost": ReplicaStreamLost,
    "engine": EngineError,
    "aborted": RequestAbortedError,
    "not_supported": NotSupportedError,
}
_NAME = {cls: name for name, cls in ALLOWED.items()}


def error_frame(sid: int, exc: BaseException) -> StreamError:
    """``exc`` as the typed frame of stream ``sid``."""
    name = next((_NAME[c] for c in type(exc).__mro__ if c in _NAME), None)
    if name is None or not isinstance(exc, FleetserveError):
        exc = EngineError(f"{type(exc).__name__}: {exc}")
        name = "engine"
    retry = getattr(exc, "retry_after_s", None) if isinstance(exc, (RateLimitError, ServiceUnavailableError)) else None
    return StreamError(sid, name, exc.code, exc.message, exc.field, retry)


def error_of(frame: StreamError) -> FleetserveError:
    """The exception ``frame`` describes, as its allow-listed class."""
    cls = ALLOWED.get(frame.kind)
    if cls is None:  # a kind this ingress does not know (a newer replica): keep what it means
        cls = ServiceUnavailableError if frame.retry_after_s is not None else EngineError
    if issubclass(cls, (RateLimitError, ServiceUnavailableError)):
        return cls(frame.message, field=frame.field, retry_after_s=frame.retry_after_s or 1.0)
    return cls(frame.message, field=frame.field)
