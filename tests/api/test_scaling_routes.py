"""The admin scaling endpoints over the REST app (in-process ASGI) with a real controller on
a fake cluster: auth before the body, overrides reach the controller and change what it
does, and the replica listing shows state, node and capacity type."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import ModelSpec
from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import AutoscalerConfig
from fleetserve.autoscaler.control import LocalScalingControl
from fleetserve.autoscaler.controller import ScalingController
from fleetserve.autoscaler.controller_metrics import ControllerMetrics
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.clock import FakeClock
from fleetserve.deployments.replica_stats import ReplicaStatus
from fleetserve.metrics.server import MetricsServer
from fleetserve.credentials import hash_api_key
from tests.autoscaler.fake_fleet import FakeFleet
from tests.fixtures.admin_app import ADMIN, admin_service, asgi_client

ROWS = [ReplicaStatus("m", "r1", 1, 2, 0.25, node_id="n-a", capacity_type="on_demand", in_flight=2),
        ReplicaStatus("m", "r2", 0, 0, 0.0, node_id="n-s", capacity_type="spot", standby=True),
        ReplicaStatus("m", "r3", 0, 1, 0.1, node_id="n-s", capacity_type="spot", draining=True)]


@pytest.fixture
def setup():
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock, cold_start_s=5)
    fleet.add()
    registry = CollectorRegistry()
    ctrl = ScalingController(AutoscalerConfig(), [FleetId("m", "v1")], fleet, clock, MemoryCanaryStore(),
                             observer=ControllerMetrics(registry))
    control = LocalScalingControl(ctrl, registry)
    client = asgi_client(build_rest_app(admin_service([ModelSpec("m", "/x", "v1")], ROWS), scaling=control))
    return client, ctrl, fleet, clock, control


async def test_scale_needs_the_admin_key_before_the_body_is_read(setup):
    client, ctrl, *_ = setup
    r = await client.post("/admin/scaling/m", content=b"{not json", headers={"Authorization": "Bearer fs-acme"})
    assert r.status_code in (401, 403)  # not 400: the body was never parsed
    r = await client.post("/admin/scaling/m", json={"min_replicas": 3, "max_replicas": 2}, headers=ADMIN)
    assert r.status_code == 400 and "max_replicas" in r.text
    r = await client.post("/admin/scaling/nope", json={"warm": 1}, headers=ADMIN)
    assert r.status_code == 404


async def test_override_reaches_the_controller_and_changes_the_fleet(setup):
    client, ctrl, fleet, clock, control = setup
    r = await client.post("/admin/scaling/m", json={"min_replicas": 2, "max_replicas": 4, "warm": 1}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["override"] == {"min_replicas": 2, "max_replicas": 4, "warm": 1}
    for _ in range(20):
        await ctrl.tick()
        clock.advance(1)
    assert len(fleet.serving()) == 2 and len(fleet.standby()) == 1
    body = (await client.get("/admin/scaling", headers=ADMIN)).json()["fleets"]["m@v1"]
    assert len(body["serving"]) == 2 and len(body["standby"]) == 1 and body["last_decision"]["target"] == 2
    assert (await client.get("/admin/scaling", headers={"Authorization": "Bearer fs-acme"})).status_code in (401, 403)
    # The controller's series are not on the REST app; the ingress's metrics listener serves them.
    assert (await client.get("/metrics/scaling")).status_code == 404
    loop = asyncio.get_running_loop()
    listener = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, accepted_hashes=[hash_api_key("fs-admin-test")],
                             extra_paths={"/metrics/scaling": lambda: asyncio.run_coroutine_threadsafe(
                                 control.metrics_text(), loop).result(10)})
    try:
        async with httpx.AsyncClient() as scraper:
            url = f"http://{listener.address}/metrics/scaling"
            assert (await scraper.get(url)).status_code == 401
            text = (await scraper.get(url, headers=ADMIN)).text
    finally:
        listener.close()
    assert 'fleetserve_target_replicas{model="m",version="v1"} 2.0' in text
    assert "fleetserve_warm_replicas" not in text  # one source: the ingress exports the warm pool


async def test_replica_listing_shows_state_node_capacity_and_load(setup):
    client, *_ = setup
    rows = (await client.get("/admin/replicas", headers=ADMIN)).json()["replicas"]
    assert [(r["replica"], r["state"], r["capacity_type"], r["node_id"], r["version"]) for r in rows] == [
        ("r1", "serving", "on_demand", "n-a", "v1"), ("r2", "standby", "spot", "n-s", "v1"),
        ("r3", "draining", "spot", "n-s", "v1")]
    assert rows[0]["in_flight"] == 2 and rows[0]["waiting"] == 1
