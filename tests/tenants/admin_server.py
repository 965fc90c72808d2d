"""A real HTTP server (uvicorn in a thread, loopback, free port) serving the admin router."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetserve.api.errors import http_error
from fleetserve.api.json_body import read_model
from fleetserve.errors import FleetserveError
from fleetserve.tenants.admin_routes import build_admin_router


def admin_app(gatekeeper) -> FastAPI:
    app = FastAPI()
    app.include_router(build_admin_router(gatekeeper, read_model))

    @app.exception_handler(FleetserveError)
    async def _err(_req: Request, exc: FleetserveError):
        status, body, headers = http_error(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    return app


@contextmanager
def serve_admin(gatekeeper, timeout_s: float = 10.0):
    with serve_asgi(admin_app(gatekeeper), timeout_s) as url:
        yield url


@contextmanager
def serve_asgi(app, timeout_s: float = 10.0):
    """Any ASGI app on a free loopback port for the duration of the block."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "admin server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
