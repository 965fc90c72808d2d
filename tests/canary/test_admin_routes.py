"""The model-version admin routes over an in-process ASGI app, with a scripted deployer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetserve.api.errors import http_error
from fleetserve.api.json_body import read_model
from fleetserve.canary.admin_routes import build_version_router
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.serving import VersionTable
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.canary.versions import verify
from fleetserve.errors import AuthenticationError, FleetserveError

ADMIN = {"Authorization": "Bearer admin"}
MODEL = "m"


class ScriptedDeployer:
    """Deploys instantly; a version 'fails' when its checkpoint no longer verifies, as the replica would."""

    def __init__(self):
        self.deployed, self.deleted = {}, []

    async def deploy(self, version):
        self.deployed[version.version_id] = version

    async def status(self, model, version):
        v = self.deployed.get(version)
        if v is None:
            return "absent", ""
        try:
            verify(v.checkpoint, v.checksum, label=v.label, expected_files=v.files)
        except FleetserveError as exc:
            return "failed", str(exc)
        return "ready", ""

    async def delete(self, model, version):
        self.deleted.append(version)
        self.deployed.pop(version, None)


async def authenticate_admin(key):
    if key != "Bearer admin":
        raise AuthenticationError("invalid admin key")


def checkpoint(root: Path, name: str, content: bytes) -> str:
    d = root / name
    d.mkdir()
    (d / "model.safetensors").write_bytes(content)
    (d / "config.json").write_text("{}")
    return str(d)


@pytest.fixture
def setup(tmp_path):
    table = VersionTable({MODEL: "v1"}, VersionRegistry(MemoryCanaryStore()))
    deployer = ScriptedDeployer()
    app = FastAPI()
    app.include_router(build_version_router(authenticate_admin, table, deployer,
                                            {MODEL: checkpoint(tmp_path, "v1", b"one")}, read_body=read_model))

    @app.exception_handler(FleetserveError)
    async def _err(_req: Request, exc: FleetserveError):
        status, body, headers = http_error(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return client, table, deployer, tmp_path


async def test_the_admin_key_is_checked_before_the_body_is_read(setup):
    client, table, deployer, root = setup
    for method, path in (("POST", f"/admin/models/{MODEL}/versions"), ("PUT", f"/admin/models/{MODEL}/weights")):
        r = await client.request(method, path, content=b"{not json", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, r.text
        r = await client.request(method, path, content=b"{not json", headers={"Authorization": "Bearer admin"})
        assert r.status_code == 400, r.text


async def test_register_set_weights_and_delete(setup):
    client, table, deployer, root = setup
    assert (await client.get(f"/admin/models/{MODEL}/versions")).status_code == 401
    assert (await client.get("/admin/models/nope/versions", headers=ADMIN)).status_code == 404
    r = await client.post(f"/admin/models/{MODEL}/versions", headers=ADMIN,
                          json={"version_id": "v2", "checkpoint": checkpoint(root, "v2", b"two")})
    assert r.status_code == 201 and r.json()["version"]["checksum"].startswith("sha256:")
    assert "v2" in deployer.deployed
    listed = (await client.get(f"/admin/models/{MODEL}/versions", headers=ADMIN)).json()
    assert [(v["version_id"], v["deployment"]) for v in listed["versions"]] == [("v1", "ready"), ("v2", "ready")]
    r = await client.put(f"/admin/models/{MODEL}/weights", headers=ADMIN, json={"weights": {"v1": 1, "v2": 1}})
    assert r.status_code == 200 and r.json()["weights"] == {"v1": 0.5, "v2": 0.5}
    await table.refresh_if_due(MODEL)  # invalidated by the PUT: reloads at once
    assert {table.choose(MODEL, user=f"u{i}", tenant_id="t", pinned=None, may_pin=False).version
            for i in range(100)} == {"v1", "v2"}
    r = await client.delete(f"/admin/models/{MODEL}/versions/v2", headers=ADMIN)
    assert r.status_code == 400 and "carries traffic" in r.json()["error"]["message"]
    await client.put(f"/admin/models/{MODEL}/weights", headers=ADMIN, json={"weights": {"v1": 1}})
    assert (await client.delete(f"/admin/models/{MODEL}/versions/v1", headers=ADMIN)).status_code == 400
    assert (await client.delete(f"/admin/models/{MODEL}/versions/v2", headers=ADMIN)).status_code == 200
    assert deployer.deleted == ["v2"]


async def test_a_checkpoint_changed_after_registration_is_blocked_and_gets_no_weight(setup):
    client, table, deployer, root = setup
    path = checkpoint(root, "v3", b"three")
    r = await client.post(f"/admin/models/{MODEL}/versions", headers=ADMIN, json={"version_id": "v3", "checkpoint": path})
    assert r.status_code == 201
    data = bytearray(Path(path, "model.safetensors").read_bytes())
    data[0] ^= 0xFF
    Path(path, "model.safetensors").write_bytes(bytes(data))
    listed = (await client.get(f"/admin/models/{MODEL}/versions", headers=ADMIN)).json()
    v3 = next(v for v in listed["versions"] if v["version_id"] == "v3")
    assert v3["state"] == "blocked" and "changed: model.safetensors" in v3["blocked_reason"]
    r = await client.put(f"/admin/models/{MODEL}/weights", headers=ADMIN, json={"weights": {"v1": 1, "v3": 1}})
    assert r.status_code == 400 and "blocked" in r.json()["error"]["message"]
    with pytest.raises(FleetserveError):  # not even pinnable
        await table.refresh_if_due(MODEL)
        table.choose(MODEL, user="u", tenant_id="t", pinned="v3", may_pin=True)


async def test_weights_refuse_a_version_still_deploying(setup):
    client, _, deployer, root = setup

    async def deploying(model, version):
        return "deploying", "replicas starting"

    deployer.status = deploying
    await client.post(f"/admin/models/{MODEL}/versions", headers=ADMIN,
                      json={"version_id": "v2", "checkpoint": checkpoint(root, "v2", b"two")})
    r = await client.put(f"/admin/models/{MODEL}/weights", headers=ADMIN, json={"weights": {"v2": 1}})
    assert r.status_code == 400 and "not ready" in r.json()["error"]["message"]
    for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
        task.cancel()
