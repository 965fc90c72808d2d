"""ASGI middleware at the REST edge: the admin key before any admin route runs, and a bound on every body.

Why a middleware and not a route dependency: FastAPI reads and validates a body parameter
(``body: SomeModel``) before it runs the route's dependencies, so an unauthenticated caller
could make an admin route read, parse and answer about a body (a 400/413 that leaks the
schema, and work done for nobody). Here the key is checked from the headers alone, before
the application sees the request, for every path under ``/admin`` whichever router serves
it; routes keep their own check as a second line.

``GET /admin/usage`` is the one exception: a tenant key may read its own usage there (the
route authenticates), and it takes no body.

Every request's body is bounded while it is received: ``max_body_bytes`` for the API,
:data:`fleetserve.api.json_body.ADMIN_MAX_BODY_BYTES` under ``/admin``. A declared
``Content-Length`` over the bound is answered 413 before any byte is read; a body that
grows past it ends with :class:`PayloadTooLargeError` (413 through the app's handlers).
"""

from __future__ import annotations

import json
from typing import Awaitable, Callable, Optional

from fleetserve.api.errors import http_error
from fleetserve.api.json_body import ADMIN_MAX_BODY_BYTES
from fleetserve.errors import FleetserveError, PayloadTooLargeError

AuthenticateAdmin = Callable[[Optional[str]], Awaitable[None]]
TENANT_READABLE = frozenset({"/admin/usage"})  # the route authenticates: a tenant key may read its own


def route_path(scope: dict) -> str:
    """The path the app routes on (Serve's route prefix, the ASGI root_path, removed)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def is_admin_path(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


class AdminGuard:
    """Authenticates ``/admin/*`` from the headers, then passes the request on with its body bounded.
    ``authenticate_admin`` None: the app serves no admin routes (the tenant half), so they are
    answered 404 by the app, as unknown paths, without a key check that would reveal them."""

    def __init__(self, app, authenticate_admin: Optional[AuthenticateAdmin], *, max_body_bytes: int,
                 admin_max_body_bytes: int = ADMIN_MAX_BODY_BYTES):
        self.app = app
        self._authenticate_admin = authenticate_admin
        self._max_body = max_body_bytes
        self._admin_max_body = admin_max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        admin = is_admin_path(path)
        limit = self._admin_max_body if admin else self._max_body
        try:
            if admin and path not in TENANT_READABLE and self._authenticate_admin is not None:
                await self._authenticate_admin(_header(scope, b"authorization"))
            _check_declared_length(scope, limit)
        except FleetserveError as exc:
            return await _answer(send, exc)
        await self.app(scope, _bounded(receive, limit), send)


def _header(scope: dict, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _check_declared_length(scope: dict, limit: int) -> None:
    length = _header(scope, b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"request body exceeds {limit} bytes")


def _bounded(receive, limit: int):
    seen = 0

    async def bounded_receive():
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
        return message

    return bounded_receive


async def _answer(send, exc: FleetserveError) -> None:
    status, body, headers = http_error(exc)
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
