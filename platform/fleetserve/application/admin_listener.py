"""The admin API on its own port (``server.admin_port``), served by each ingress replica.

The tenant-facing port then carries no ``/admin/*`` route at all; the admin one carries only
``/admin/*`` and ``/health`` and binds ``server.admin_host`` (loopback by default), so a
network policy or a port that is simply not exposed keeps tenants away from it. Every ingress
replica on a node listens on the same port with SO_REUSEPORT (the kernel spreads
connections); with tenants in Redis they all see the same registry.

The listener is Serve's own uvicorn helper (the one that runs an ingress replica's direct
HTTP port), started on the replica's event loop, so the admin routes share the loop, the
gatekeeper and its Redis connections with the tenant-facing app.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

log = logging.getLogger(__name__)


class AdminListener:
    """Starts and stops one uvicorn server for the admin app."""

    def __init__(self, app, host: str, port: int):
        self._app, self._host, self._port = app, host, port
        self._task: Optional[asyncio.Task] = None
        self._server = None

    async def start(self) -> None:
        from ray.serve.config import HTTPOptions
        from ray.serve._private.http_util import start_asgi_http_server

        loop = asyncio.get_running_loop()
        self._task, self._server = await start_asgi_http_server(
            self._app, HTTPOptions(host=self._host, port=self._port), event_loop=loop, enable_so_reuseport=True)
        self._task.add_done_callback(self._ended)
        log.info("admin API listening on %s:%d", self._host, self._port)

    def _ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("admin API listener on %s:%d stopped: %r", self._host, self._port, task.exception())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait([self._task], timeout=5)
