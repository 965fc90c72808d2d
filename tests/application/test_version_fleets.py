"""Runtime versions as controller fleets, without Ray: the catalog over a real version
registry (in-memory store), the replicas and load read from Serve's details and the
published load, and the Serve actuator counting and scaling them like the stable ones."""

from __future__ import annotations

from fleetserve.application.serve_fleet import DeploymentRef, ServeFleetActuator
from fleetserve.application.version_fleets import RegistryFleetCatalog, ServeVersionReplicas
from fleetserve.application.versions import version_slug
from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import PlacementConfig
from fleetserve.autoscaler.snapshot import CapacityType, ReplicaState
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.canary.versions import VersionState
from fleetserve.router.stats_board import ReplicaStatsBoard
from tests.application.test_serve_fleet import Counts, Handle
from tests.canary.factories import make_version

CANARY = FleetId("m", "v2.1")
APP, DEP = "app--m--v2-1", "model-m--v2-1"


def details(*replicas, app=APP, dep=DEP):
    return {"applications": {"app": {"deployments": {}},
                             app: {"deployments": {dep: {"replicas": [
                                 {"replica_id": rid, "state": state, "node_id": "n1"} for rid, state in replicas]}}}}}


def make_replicas(serve, load=None, clock=lambda: 0.0):
    return ServeVersionReplicas(lambda m: f"app--{m}--", lambda m, v: (f"app--{m}--{version_slug(v)}",
                                                                      f"model-{m}--{version_slug(v)}"),
                                details=lambda: serve, load_of=lambda a, d: (load or {}).get((a, d), {}), clock=clock,
                                app_names=lambda: serve["applications"])


async def test_the_catalog_plans_stable_and_deployed_servable_versions_with_the_split_weights():
    reg = VersionRegistry(MemoryCanaryStore())
    await reg.register(make_version("v1", state=VersionState.STABLE))
    await reg.register(make_version("v2.1", state=VersionState.ROLLING_OUT))
    await reg.register(make_version("v3"))  # registered, never deployed
    await reg.register(make_version("v4", state=VersionState.BLOCKED, blocked_reason="checksum"))
    serve = details(("r1", "RUNNING"))
    serve["applications"]["app--m--v4"] = {"deployments": {}}  # blocked, not yet deleted
    serve["applications"]["app--m--v9"] = {"deployments": {}}  # runs, unknown to this registry
    catalog = RegistryFleetCatalog({"m": "v1"}, reg, make_replicas(serve), version_slug)
    assert await catalog.fleets() == {FleetId("m", "v1"): None, CANARY: None, FleetId("m", "v9"): None}  # no split yet
    await reg.set_weights("m", {"v1": 3, "v2.1": 1})
    assert await catalog.fleets() == {FleetId("m", "v1"): 0.75, CANARY: 0.25, FleetId("m", "v9"): 0.0}
    await reg.set_weights("m", {"v2.1": 1})
    assert (await catalog.fleets())[FleetId("m", "v1")] == 0.0  # promoted away: still planned, down to its min


async def test_version_replicas_are_the_running_ones_with_the_published_load_spread_evenly():
    serve = details(("b", "RUNNING"), ("a", "RUNNING"), ("c", "STARTING"))
    reps = make_replicas(serve, load={(APP, DEP): {"running": 5, "queued": 3}})
    got, queued = await reps.replicas(CANARY)
    assert [(r.replica_id, r.state, r.running, r.node_id) for r in got] == [
        ("a", ReplicaState.ACTIVE, 3, "n1"), ("b", ReplicaState.ACTIVE, 2, "n1")]
    assert queued == 3
    assert await reps.replicas(FleetId("m", "gone")) == ([], 0)
    assert await reps.deployed("m") == {APP: "v2-1"} and await reps.deployed("n") == {}


async def test_serve_details_are_read_once_per_tick_not_per_fleet():
    reads, now = [], [0.0]

    def read():
        reads.append(1)
        return details(("a", "RUNNING"))

    reps = ServeVersionReplicas(lambda m: f"app--{m}--", lambda m, v: (APP, DEP), details=read,
                                load_of=lambda a, d: {}, clock=lambda: now[0], max_age_s=1.0, app_names=lambda: [APP])
    await reps.deployed("m")
    await reps.replicas(CANARY)
    await reps.replicas(CANARY)
    assert len(reads) == 1
    now[0] = 2.0
    await reps.replicas(CANARY)
    assert len(reads) == 2


async def test_the_actuator_counts_and_scales_a_version_by_its_own_deployment_and_pins_nothing():
    counts, log = Counts(), []
    serve = details(("a", "RUNNING"), ("b", "RUNNING"))
    act = ServeFleetActuator({"m@v1": {CapacityType.ON_DEMAND: DeploymentRef("app", "model-m")}}, PlacementConfig(),
                             board=ReplicaStatsBoard(), counts=counts, spot_available=lambda: False,
                             handle_for=lambda ref: Handle(log), versions=make_replicas(serve))
    obs = await act.observe(CANARY)
    assert {r.replica_id for r in obs.replicas} == {"a", "b"} and obs.spot.available is False
    await act.start(CANARY, CapacityType.SPOT, 2)  # no spot twin for a version: its one deployment
    assert counts.values == {DeploymentRef(APP, DEP): 4}
    await act.stop(CANARY, "a")
    assert counts.values == {DeploymentRef(APP, DEP): 3}
    await act.park(CANARY, "b")
    await act.drain(CANARY, "b")
    await act.activate(CANARY, "b")
    assert log == []  # Serve's default router would send a pinned call to any replica: none is made


async def test_without_a_version_source_an_unknown_fleet_is_empty_and_left_alone():
    counts = Counts()
    act = ServeFleetActuator({}, PlacementConfig(), board=ReplicaStatsBoard(), counts=counts,
                             spot_available=lambda: False, handle_for=lambda ref: Handle([]))
    assert (await act.observe(CANARY)).replicas == ()
    await act.start(CANARY, CapacityType.ON_DEMAND, 1)
    assert counts.values == {}
