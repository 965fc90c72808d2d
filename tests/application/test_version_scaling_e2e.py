"""End to end on real Ray Serve with the scaling controller on: a model version deployed at
runtime (its own Serve application, through the admin REST API) becomes a fleet of the
controller, which sets its replica count (``fleetserve scale MODEL --version v2``) by
Serve's status, without the replica stats board."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.ray_serve import wait_for
from tests.fixtures.scaling_app import ADMIN, deployed, scaling_config

pytestmark = pytest.mark.ray

APP, PREFIX = "fs-vscale", "/vscale"


@pytest.fixture(scope="module")
def version_app(serve_app):
    cfg = scaling_config(serve_app, APP, PREFIX, model={
        "engine_args": {"num_kv_blocks": 64, "max_num_seqs": 4, "num_threads": 1, "engine_process": False},
        "resources": {"num_cpus": 0.1}, "drain_timeout_s": 10, "replicas": {"num": 1, "min": 1, "max": 2}}, defaults={
        "scaling": {"min_replicas": 1, "max_replicas": 2, "downscale_delay_s": 1, "downscale_cooldown_s": 1}})
    with deployed(serve_app, cfg) as base:
        yield base, cfg


def running_replicas(app: str) -> int:
    from ray import serve

    a = serve.status().applications.get(app)
    if a is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in a.deployments.values())


def test_the_controller_sets_a_runtime_versions_replica_count(version_app, serve_app):
    from fleetserve.application.versions import ServeVersionDeployer

    base, cfg = version_app
    model, admin = serve_app.model, httpx.Client(base_url=base, headers=ADMIN, timeout=60)
    r = admin.post(f"/admin/models/{model}/versions", json={"version_id": "v2", "checkpoint": serve_app.checkpoint})
    assert r.status_code == 201, r.text
    app = ServeVersionDeployer(cfg).app_name(model, "v2")
    wait_for(lambda: running_replicas(app) == 1, 300, "v2's application to run one replica", interval_s=1.0)
    fleets = lambda: admin.get("/admin/scaling").json()["fleets"]  # noqa: E731
    wait_for(lambda: len(fleets().get(f"{model}@v2", {}).get("serving", [])) == 1, 60,
             "the controller to plan v2 as a fleet", interval_s=1.0)

    assert admin.post(f"/admin/scaling/{model}", json={"version": "v2", "min_replicas": 2}).status_code == 200
    wait_for(lambda: running_replicas(app) == 2, 300, "the controller's count to start a second v2 replica",
             interval_s=1.0)
    wait_for(lambda: len(fleets()[f"{model}@v2"]["serving"]) == 2, 60, "both v2 replicas serving", interval_s=1.0)

    assert admin.post(f"/admin/scaling/{model}",
                      json={"version": "v2", "min_replicas": 1, "max_replicas": 1}).status_code == 200
    wait_for(lambda: running_replicas(app) == 1, 180, "the controller's count to stop one v2 replica", interval_s=1.0)
