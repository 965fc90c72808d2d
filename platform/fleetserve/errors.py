"""Typed exceptions raised inside fleetserve.

Every error that can reach a user derives from :class:`FleetserveError`. The API edge
(``fleetserve.api.errors``) maps each class once to an HTTP status / gRPC code and an
OpenAI-shaped body; nothing else in the package knows about status codes.
"""

from __future__ import annotations

from typing import Optional


class FleetserveError(Exception):
    """Base class. ``field`` names the offending request/config field when there is one."""

    code: str = "internal_error"

    def __init__(self, message: str, *, field: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequestError(FleetserveError):
    """A request parameter is out of range or malformed (HTTP 400)."""

    code = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    """Prompt (+ max_tokens) cannot fit in the model's context (HTTP 400)."""

    code = "context_length_exceeded"


class PayloadTooLargeError(FleetserveError):
    """Request body larger than the configured limit (HTTP 413)."""

    code = "payload_too_large"


class AuthenticationError(FleetserveError):
    """Missing or invalid API key (HTTP 401)."""

    code = "invalid_api_key"


class PermissionDeniedError(FleetserveError):
    """Valid key, but not allowed to use this model / endpoint (HTTP 403)."""

    code = "permission_denied"


class ModelNotFoundError(FleetserveError):
    """Unknown model name (HTTP 404)."""

    code = "model_not_found"


class NotFoundError(FleetserveError):
    """Unknown resource other than a model, e.g. a tenant id (HTTP 404)."""

    code = "not_found"


class ConflictError(FleetserveError):
    """The resource already exists, e.g. a tenant id taken (HTTP 409)."""

    code = "conflict"


class RateLimitError(FleetserveError):
    """Over quota or shed under overload (HTTP 429 with Retry-After)."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, field: Optional[str] = None):
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class ServiceUnavailableError(FleetserveError):
    """No replica ready, engine draining, or a fail-closed dependency is down (HTTP 503)."""

    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, field: Optional[str] = None):
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class ReplicaStreamLost(ServiceUnavailableError):
    """A replica's stream of one request broke before its final output: the replica died,
    its link closed, or it ended the request under the caller. The ingress resumes it on
    another replica from the tokens already sent (``api/resume.py``); a client sees it
    (503) only when no replica could take the request over. ``replica``: the replica
    that lost it, when known (the resume avoids it)."""

    code = "service_unavailable"

    def __init__(self, message: str, *, replica: Optional[str] = None, retry_after_s: float = 1.0,
                 field: Optional[str] = None):
        super().__init__(message, retry_after_s=retry_after_s, field=field)
        self.replica = replica


class RequestMigrated(ReplicaStreamLost):
    """A draining replica handed the request back (drain mode ``migrate``): the ingress
    resumes it elsewhere at once instead of waiting for it to finish there."""


class EngineError(FleetserveError):
    """The engine failed while processing one request (HTTP 500; never caused by user input)."""

    code = "engine_error"


class RequestAbortedError(FleetserveError):
    """The request was aborted (client disconnect, deadline, admin abort)."""

    code = "request_aborted"


class ConfigError(FleetserveError):
    """An invalid configuration file or value; ``field`` is the dotted path."""

    code = "config_error"


class NotSupportedError(FleetserveError):
    """This engine backend cannot do the operation at all, e.g. sleep mode of vLLM on CPU (HTTP 501)."""

    code = "not_supported"


def portable(exc: Optional[BaseException]) -> Optional[BaseException]:
    """``exc`` if it pickles (to cross a process or a socket), else an EngineError naming it."""
    if exc is None:
        return None
    import pickle

    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001 - any unpicklable exception
        return EngineError(f"{type(exc).__name__}: {exc}")
