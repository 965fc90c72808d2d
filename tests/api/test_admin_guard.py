"""The REST edge's admin guard: the admin key before any /admin/* route reads a body, every
body bounded, and the tenant/admin halves for a separate admin port (``server.admin_port``)."""

from __future__ import annotations

import httpx
import pytest

from fleetserve.api.admin_guard import route_path
from fleetserve.api.json_body import ADMIN_MAX_BODY_BYTES, read_model
from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.canary.admin_routes import build_version_router
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.serving import VersionTable
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.api.rest_harness import ADMIN, AUTH, MODEL, TENANT_KEY
from tests.tenants.factories import make_config, make_spec


class NoDeployer:
    async def deploy(self, version):
        raise AssertionError("an unauthenticated request reached the deployer")

    async def status(self, model, version):
        return "absent", ""

    async def delete(self, model, version):
        raise AssertionError("an unauthenticated request reached the deployer")


def make_app(tmp_path, surface="all", max_body_bytes=1 << 20):
    gk = TenantGatekeeper(make_config(make_spec(id="acme", key=TENANT_KEY)))
    service = InferenceService([ModelSpec(MODEL, str(tmp_path))], client=None, gatekeeper=gk, metrics=FleetMetrics())
    table = VersionTable({MODEL: "v1"}, VersionRegistry(MemoryCanaryStore()))
    versions = build_version_router(gk.authenticate_admin, table, NoDeployer(), {MODEL: str(tmp_path)}, read_body=read_model)
    return build_rest_app(service, max_body_bytes=max_body_bytes, routers=(versions,), surface=surface)


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fleetserve")


async def call_raw(app, method: str, path: str, headers: list, body_parts: list[bytes]) -> tuple[int, int]:
    """One request straight through the ASGI app; returns (status, body messages the app read)."""
    reads = 0
    parts = list(body_parts)

    async def receive():
        nonlocal reads
        reads += 1
        chunk = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    status = []

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
             "root_path": "", "scheme": "http", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("fleetserve", 80)}
    await app(scope, receive, send)
    return status[0], reads


@pytest.mark.parametrize("path", ["/admin/tenants", "/admin/models/tiny/versions", "/admin/nodes/n1/drain",
                                  "/admin/no-such-route"])
@pytest.mark.parametrize("auth", [[], [(b"authorization", b"Bearer fs-wrong")], [(b"authorization", b"Bearer " + TENANT_KEY.encode())]])
async def test_admin_routes_authenticate_before_reading_a_body(tmp_path, path, auth):
    app = make_app(tmp_path)
    status, reads = await call_raw(app, "POST", path, [(b"content-type", b"application/json"), *auth], [b"{not json"])
    assert status in (401, 403) and reads == 0  # not 400/422: nothing of the body was read


async def test_the_versions_route_no_longer_validates_a_body_for_a_stranger(tmp_path):
    async with client(make_app(tmp_path)) as c:
        r = await c.post("/admin/models/tiny/versions", json={"bogus": 1})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await c.post("/admin/models/tiny/versions", json={"bogus": 1}, headers=ADMIN)
        assert r.status_code in (400, 422)  # with the key, the body is validated as before


async def test_every_admin_body_is_bounded_even_without_content_length(tmp_path):
    app = make_app(tmp_path)
    big = b'{"id": "' + b"x" * (ADMIN_MAX_BODY_BYTES + 10) + b'"}'
    async with client(app) as c:
        r = await c.post("/admin/models/tiny/versions", content=big, headers={**ADMIN, "content-type": "application/json"})
        assert r.status_code == 413  # declared length over the admin bound: refused before reading
    admin = [(b"authorization", b"Bearer fs-admin-test"), (b"content-type", b"application/json")]
    halves = [big[: len(big) // 2], big[len(big) // 2:]]  # chunked: no content-length at all
    status, _ = await call_raw(app, "POST", "/admin/tenants", admin, halves)
    assert status == 413
    status, _ = await call_raw(app, "POST", "/admin/models/tiny/versions", admin, halves)
    assert status in (400, 413)  # FastAPI's own body parsing reports the cut body as 400; never 5xx


async def test_api_bodies_are_bounded_by_max_request_body_bytes(tmp_path):
    app = make_app(tmp_path, max_body_bytes=2048)
    async with client(app) as c:
        r = await c.post("/v1/completions", content=b"x" * 4096, headers=AUTH)
        assert r.status_code == 413


async def test_usage_still_takes_a_tenant_key(tmp_path):
    async with client(make_app(tmp_path)) as c:
        assert (await c.get("/admin/usage", headers=AUTH)).status_code == 200
        assert (await c.get("/admin/usage")).status_code == 401


async def test_tenant_and_admin_halves(tmp_path):
    async with client(make_app(tmp_path, surface="tenant")) as tenant:
        assert (await tenant.get("/health")).status_code == 200
        assert (await tenant.get("/v1/models", headers=AUTH)).status_code == 200
        assert (await tenant.get("/admin/tenants", headers=ADMIN)).status_code == 404
        assert (await tenant.post("/admin/tenants", content=b"{")).status_code == 404  # no key check reveals it
        assert (await tenant.get("/admin/status", headers=ADMIN)).status_code == 404
        assert "/admin/tenants" not in (await tenant.get("/openapi.json")).json()["paths"]
    async with client(make_app(tmp_path, surface="admin")) as admin:
        assert (await admin.get("/admin/tenants", headers=ADMIN)).status_code == 200
        assert (await admin.get("/admin/tenants")).status_code == 401
        assert (await admin.post("/v1/completions", headers=AUTH, json={})).status_code == 404
        assert (await admin.get("/metrics")).status_code == 404
        assert "/v1/completions" not in (await admin.get("/openapi.json")).json()["paths"]


def test_route_path_strips_the_serve_route_prefix():
    assert route_path({"path": "/pre/admin/x", "root_path": "/pre"}) == "/admin/x"
    assert route_path({"path": "/admin/x", "root_path": ""}) == "/admin/x"
    assert route_path({"path": "/pre", "root_path": "/pre"}) == "/"
