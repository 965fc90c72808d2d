"""Runtime versions as controller fleets, without Ray's cluster: the catalog over a real
version registry (in-memory store), the version applications read from Serve's details, the
Serve actuator observing and acting on a version's deployment like a stable one (the replica
stats board, pinned calls, the GCS count), and the version application as Serve builds it."""

from __future__ import annotations

import time

import pytest

from fleetserve.application.serve_fleet import DeploymentRef, ServeFleetActuator
from fleetserve.application.version_fleets import RegistryFleetCatalog, ServeVersionApps
from fleetserve.application.versions import version_slug
from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import PlacementConfig
from fleetserve.autoscaler.snapshot import CapacityType, ReplicaState
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.canary.versions import VersionState
from fleetserve.deployments.replica_stats import ReplicaStats
from fleetserve.router.stats_board import ReplicaStatsBoard
from tests.application.test_serve_fleet import Counts, Handle
from tests.canary.factories import make_version

CANARY = FleetId("m", "v2.1")
APP, DEP = "app--m--v2-1", "model-m--v2-1"


def details(app=APP, *states):
    replicas = [{"replica_id": f"r{i}", "state": st} for i, st in enumerate(states)]
    return {"applications": {"app": {"deployments": {}}, app: {"deployments": {DEP: {"replicas": replicas}}}}}


def make_apps(serve, clock=lambda: 0.0, max_age_s=1.0, app_names=None):
    return ServeVersionApps(lambda m: f"app--{m}--", lambda m, v: (f"app--{m}--{version_slug(v)}",
                                                                  f"model-{m}--{version_slug(v)}"),
                            details=serve, clock=clock, max_age_s=max_age_s,
                            app_names=app_names or (lambda: serve()["applications"]))


async def test_the_catalog_plans_stable_and_deployed_servable_versions_with_the_split_weights():
    reg = VersionRegistry(MemoryCanaryStore())
    await reg.register(make_version("v1", state=VersionState.STABLE))
    await reg.register(make_version("v2.1", state=VersionState.ROLLING_OUT))
    await reg.register(make_version("v3"))  # registered, never deployed
    await reg.register(make_version("v4", state=VersionState.BLOCKED, blocked_reason="checksum"))
    serve = details()
    serve["applications"]["app--m--v4"] = {"deployments": {}}  # blocked, not yet deleted
    serve["applications"]["app--m--v9"] = {"deployments": {}}  # runs, unknown to this registry
    catalog = RegistryFleetCatalog({"m": "v1"}, reg, make_apps(lambda: serve), version_slug)
    assert await catalog.fleets() == {FleetId("m", "v1"): None, CANARY: None, FleetId("m", "v9"): None}  # no split yet
    await reg.set_weights("m", {"v1": 3, "v2.1": 1})
    assert await catalog.fleets() == {FleetId("m", "v1"): 0.75, CANARY: 0.25, FleetId("m", "v9"): 0.0}
    await reg.set_weights("m", {"v2.1": 1})
    assert (await catalog.fleets())[FleetId("m", "v1")] == 0.0  # promoted away: still planned, down to its min


async def test_serve_details_are_read_once_per_tick_not_per_model():
    reads, now = [], [0.0]

    def read():
        reads.append(1)
        return details()

    apps = make_apps(read, clock=lambda: now[0], app_names=lambda: ["app", APP])
    assert await apps.deployed("m") == {APP: "v2-1"} and await apps.deployed("n") == {}
    assert not reads  # which versions exist comes from the application names: no full status read
    assert await apps.running(CANARY) == 0 and await apps.running(FleetId("m", "gone")) == 0
    assert len(reads) == 1
    now[0] = 2.0
    await apps.running(CANARY)
    assert len(reads) == 2
    assert apps.ref(CANARY) == (APP, DEP)


def make_actuator(board, counts, log, serve=None):
    serve = serve or details(APP, "RUNNING")
    return ServeFleetActuator({"m@v1": {CapacityType.ON_DEMAND: DeploymentRef("app", "model-m")}}, PlacementConfig(),
                              board=board, counts=counts, spot_available=lambda: True,
                              handle_for=lambda ref: Handle(log), versions=make_apps(lambda: serve, max_age_s=-1))


async def test_a_version_is_observed_on_the_board_and_its_replicas_take_pinned_calls():
    board, counts, log = ReplicaStatsBoard(), Counts(), []
    now = time.time()
    board.publish(DEP, {"a": ReplicaStats("a", in_flight=3, num_waiting=1, ts=now, node_id="n1"),
                        "b": ReplicaStats("b", standby=True, ts=now, node_id="n1"),
                        "c": ReplicaStats("c")})  # still loading: not adopted
    act = make_actuator(board, counts, log)
    obs = await act.observe(CANARY)
    assert {(r.replica_id, r.state, r.running) for r in obs.replicas} == {
        ("a", ReplicaState.ACTIVE, 3), ("b", ReplicaState.WARM_STANDBY, 0)}
    assert obs.queued == 1 and obs.spot.available is False  # no spot twin for a runtime version
    await act.activate(CANARY, "b")
    await act.drain(CANARY, "a", migrate=True)
    assert log == [("set_standby", (False,), {"target_replica": "b"}),
                   ("set_draining", (True,), {"mode": "migrate", "target_replica": "a"})]
    await act.start(CANARY, CapacityType.SPOT, 2)  # on its one (on-demand) deployment
    assert counts.values == {DeploymentRef(APP, DEP): 4}  # the two reported replicas + two ("c" has not reported)
    await act.stop(CANARY, "a")
    assert counts.values == {DeploymentRef(APP, DEP): 3}


async def test_a_versions_router_is_started_by_a_call_once_serve_runs_a_replica():
    board, counts, log = ReplicaStatsBoard(), Counts(), []
    serve = details(APP, "STARTING")
    act = make_actuator(board, counts, log, serve)
    assert (await act.observe(CANARY)).replicas == () and log == []  # still loading: no call to wait on
    serve["applications"][APP]["deployments"][DEP]["replicas"][0]["state"] = "RUNNING"
    await act.observe(CANARY)
    assert log == [("stats", (), {})]  # the first call starts the handle's router, which reports to the board


async def test_without_a_version_source_an_unknown_fleet_is_empty_and_left_alone():
    counts = Counts()
    act = ServeFleetActuator({}, PlacementConfig(), board=ReplicaStatsBoard(), counts=counts,
                             spot_available=lambda: False, handle_for=lambda ref: Handle([]))
    assert (await act.observe(CANARY)).replicas == ()
    await act.start(CANARY, CapacityType.ON_DEMAND, 1)
    assert counts.values == {}


def test_a_version_application_keeps_the_replica_router_under_haproxy(monkeypatch):
    """Serve refuses a custom router on an application's ingress under HAProxy: the model
    deployment must not be the ingress, and must keep the stable deployment's options."""
    build_app_mod = pytest.importorskip("ray.serve._private.build_app")
    from fleetserve.application.build import model_options
    from fleetserve.application.versions import VERSION_INGRESS, ServeVersionDeployer
    from fleetserve.config import parse_config
    from fleetserve.router.replica_router import FleetReplicaRouter

    monkeypatch.setattr(build_app_mod, "RAY_SERVE_ENABLE_HA_PROXY", True)
    cfg = parse_config({"models": [{"name": "m", "checkpoint": "/x", "replicas": {"num": 1, "max": 2}}],
                        "autoscaler": {"controller": True}})
    deployer = ServeVersionDeployer(cfg)
    built = build_app_mod.build_app(deployer.application(make_version("v2.1")), name=APP)
    by_name = {d.name: d for d in built.deployments}
    assert built.ingress_deployment_name == VERSION_INGRESS
    assert by_name[VERSION_INGRESS].ray_actor_options["num_cpus"] == 0
    replica = by_name[deployer.deployment("m", "v2.1")]
    assert replica.name == DEP
    assert replica._deployment_config.request_router_config.get_request_router_class() is FleetReplicaRouter
    stable = model_options(cfg.models[0], cfg)
    assert replica._deployment_config.autoscaling_config.policy.policy_function == \
        stable["autoscaling_config"].policy.policy_function  # the controller's count hook
    assert replica._deployment_config.graceful_shutdown_timeout_s == stable["graceful_shutdown_timeout_s"]


async def test_a_replica_gone_from_the_board_takes_no_more_calls():
    board, counts, log = ReplicaStatsBoard(), Counts(), []
    board.publish(DEP, {"a": ReplicaStats("a", ts=time.time())})
    act = make_actuator(board, counts, log)
    await act.observe(CANARY)
    board.publish(DEP, {})  # stopped (or the version deleted)
    await act.observe(CANARY)
    await act.drain(CANARY, "a")
    await act.stop(CANARY, "a")
    assert log == [] and counts.values == {}
