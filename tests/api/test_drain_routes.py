"""The admin drain endpoints over the REST app (in-process ASGI): auth first, which replicas a
node drain reaches, and what reaches the replica control."""

from __future__ import annotations

import pytest

from fleetserve.api.drain_routes import replicas_on_node
from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import ModelSpec
from fleetserve.deployments.replica_stats import ReplicaStatus
from fleetserve.kube.drainer import DrainRequest, RayPod
from tests.fixtures.admin_app import ADMIN, RecordingControl, admin_service, asgi_client


def row(replica: str, node_id: str, node_ip: str, model: str = "m") -> ReplicaStatus:
    return ReplicaStatus(model, replica, 0, 0, 0.0, node_id=node_id, node_ip=node_ip)


ROWS = [row("r1", "n-a", "10.0.0.1"), row("r2", "n-b", "10.0.0.2"), row("r3", "n-b", "10.0.0.2", model="other")]
MODELS = [ModelSpec("m", "/x"), ModelSpec("other", "/y")]


@pytest.fixture
def app():
    control = RecordingControl()
    return asgi_client(build_rest_app(admin_service(MODELS, ROWS), control=control)), control


def test_node_matching_by_ray_node_id_ip_or_pod_ips():
    assert [r.replica for r in replicas_on_node(ROWS, "n-b", [])] == ["r2", "r3"]
    assert [r.replica for r in replicas_on_node(ROWS, "10.0.0.1", [])] == ["r1"]
    assert [r.replica for r in replicas_on_node(ROWS, "ip-10-0-0-2.ec2.internal", ["10.0.0.2"])] == ["r2", "r3"]
    assert replicas_on_node(ROWS, "some-k8s-node", ["10.9.9.9"]) == []


async def test_drain_and_resume_need_the_admin_key_and_a_known_replica(app):
    client, control = app
    async with client:
        assert (await client.post("/admin/replicas/r1/drain")).status_code == 401
        r = await client.post("/admin/replicas/r1/drain", headers={"Authorization": "Bearer fs-acme"})
        assert r.status_code == 403
        assert control.calls == []
        r = await client.post("/admin/replicas/nope/drain", headers=ADMIN)
        assert r.status_code == 404 and r.json()["error"]["param"] == "replica_id"
        r = await client.post("/admin/replicas/r1/drain", headers=ADMIN)
        assert r.status_code == 202 and r.json() == {"replica": "r1", "model": "m", "applied": True,
                                                     "draining": True, "in_flight": 1, "migrated": 0}
        assert (await client.post("/admin/replicas/r1/resume", headers=ADMIN)).json()["draining"] is False
        assert (await client.post("/admin/replicas/r1/drain?mode=finish", headers=ADMIN)).status_code == 202
        r = await client.post("/admin/replicas/r1/drain?mode=sideways", headers=ADMIN)
        assert r.status_code in (400, 422) and len(control.calls) == 3
    assert control.calls == [("m", "r1", True), ("m", "r1", False), ("m", "r1", True)]
    assert control.modes == [None, None, "finish"]


async def test_node_drain_as_the_spot_watcher_sends_it(app):
    client, control = app
    body = DrainRequest(node="ip-10-0-0-2", reason="aws-spot-interruption", signals=("aws-nth",), deadline_s=120,
                        pods=(RayPod("ray-worker-spot-x", "10.0.0.2"),)).body()  # exactly what the watcher sends
    async with client:
        r = await client.post("/admin/nodes/ip-10-0-0-2/drain", headers=ADMIN, json=body)
        assert r.status_code == 202
        assert [x["replica"] for x in r.json()["replicas"]] == ["r2", "r3"]
        assert (await client.post("/admin/nodes/n-a/drain", headers=ADMIN)).json()["replicas"][0]["replica"] == "r1"
        r = await client.post("/admin/nodes/n-a/drain", headers=ADMIN, content=b"{not json")
        assert r.status_code == 400
        r = await client.post("/admin/nodes/n-a/drain", headers=ADMIN, json={"deadline_s": -1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "deadline_s"
        r = await client.post("/admin/nodes/n-a/drain", headers=ADMIN, json={"mode": "later"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "mode"
        assert (await client.post("/admin/nodes/n-a/drain", headers=ADMIN, json={"mode": "migrate"})).status_code == 202
        r = await client.post("/admin/nodes/n-a/drain", headers=ADMIN, content=b"x" * (65 * 1024))
        assert r.status_code == 413
    assert control.calls == [("other" if rid == "r3" else "m", rid, True) for rid in ("r2", "r3", "r1", "r1")]
    assert control.modes == [None, None, None, "migrate"]
