"""The REST app over an in-process :class:`InferenceService`, for tests without Ray.

``make_rest(client, checkpoint)`` builds the real app (``build_rest_app``) around a real
:class:`TenantGatekeeper` (in-memory store, one tenant, the admin key) and any
:class:`ModelClient`: a scripted one, or :class:`ReplicaClient` over a real
:class:`ModelReplica`. Requests go through httpx's ASGI transport, so no port is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import httpx
from prometheus_client import CollectorRegistry

from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.engine.protocol import ModelInfo, RequestOutput
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.tenants.factories import make_config, make_spec

TENANT_KEY = "fs-tenant-key"
ADMIN_KEY = "fs-admin-test"  # tests.tenants.factories.make_config's admin key
MODEL = "tiny"
AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Rest:
    app: object
    service: InferenceService
    gatekeeper: TenantGatekeeper
    registry: CollectorRegistry

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://fleetserve")

    def tenant_requests(self, outcome: str) -> float:
        """Requests metered for the tenant with this outcome (``ok`` / ``error`` / ``aborted``)."""
        v = self.registry.get_sample_value("fleetserve_tenant_requests_total",
                                           {"tenant": "acme", "model": MODEL, "outcome": outcome})
        return v or 0.0

    def requests_with_status(self, status: int) -> float:
        """The ingress's request counter (``fleetserve_requests_total``) for this status."""
        v = self.service.metrics.registry.get_sample_value(
            "fleetserve_requests_total", {"tenant": "acme", "model": MODEL, "version": "v1", "status": str(status)})
        return v or 0.0


def make_rest(client, checkpoint, *, max_body_bytes: int = 1 << 20, resume=None) -> Rest:
    """``resume``: the service's ResumePolicy (None: the default)."""
    registry = CollectorRegistry()
    gk = TenantGatekeeper(make_config(make_spec(id="acme", key=TENANT_KEY)), metrics_registry=registry)
    service = InferenceService([ModelSpec(MODEL, str(checkpoint))], client, gk, metrics=FleetMetrics(), resume=resume)
    return Rest(build_rest_app(service, max_body_bytes=max_body_bytes), service, gk, registry)


TINY_INFO = ModelInfo(name=MODEL, max_model_len=256, vocab_size=512, eos_token_ids=[0], has_chat_template=True)


GATE = "gate"  # in a script: wait until the test opens ``ScriptedClient.gate``


class ScriptedClient:
    """Every engine request streams the same script; ``None`` in it ends the stream early,
    an exception is raised, :data:`GATE` waits for ``self.gate`` (open unless ``gated``)."""

    def __init__(self, script: list, info: ModelInfo = TINY_INFO, gated: bool = False):
        import asyncio

        self.script, self.info = script, info
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def generate(self, request, route):
        for out in self.script:
            if out is None:
                return
            if out is GATE:
                await self.gate.wait()
                continue
            if isinstance(out, BaseException):
                raise out
            yield out

    async def model_info(self, model):
        return self.info


class ReplicaClient:
    """The stream stage over one in-process :class:`ModelReplica` (no Serve, no link)."""

    def __init__(self, replica):
        self.replica = replica

    async def generate(self, request, route):
        async for out in self.replica.generate(request):
            yield out

    async def model_info(self, model):
        return await self.replica.model_info()


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


class AsgiCall:
    """One request straight into the ASGI app, its response read message by message (httpx's
    ASGI transport buffers a whole response; a test that acts mid-stream needs the parts)."""

    def __init__(self, app, path: str, body: bytes, headers: dict[str, str]):
        import asyncio

        self._messages: asyncio.Queue = asyncio.Queue()
        self._done = asyncio.Event()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in {**headers, "content-type": "application/json",
                                                                           "content-length": str(len(body))}.items()],
                 "server": ("fleetserve", 80), "client": ("127.0.0.1", 1234)}
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self._done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            await self._messages.put(message)

        async def run():
            try:
                await app(scope, receive, send)
            finally:
                self._done.set()

        self.task = asyncio.create_task(run())
        self.status: Optional[int] = None
        self.body = b""

    async def read_until(self, needle: bytes, timeout_s: float = 60.0) -> None:
        """Read response messages until the body holds ``needle`` (or the response ends)."""
        import asyncio

        async def pump():
            while needle not in self.body:
                m = await self._messages.get()
                if m["type"] == "http.response.start":
                    self.status = m["status"]
                elif m["type"] == "http.response.body":
                    self.body += m.get("body", b"")
                    if not m.get("more_body", False):
                        return

        await asyncio.wait_for(pump(), timeout_s)

    async def finish(self, timeout_s: float = 60.0) -> None:
        await self.read_until(b"\0never\0", timeout_s)
        await self.task
