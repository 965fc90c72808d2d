"""The scaling controller reads Serve's full status (``get_serve_instance_details``) only
while a runtime version is planned: with none, each tick lists Serve's applications by name
(one small call) and nothing more. Real controller, real catalog over a real (in-memory)
registry, the Serve actuator; Serve's two reads are counted fakes."""

from __future__ import annotations

from fleetserve.application.serve_fleet import DeploymentRef, ServeFleetActuator
from fleetserve.application.version_fleets import RegistryFleetCatalog, ServeVersionApps
from fleetserve.application.versions import version_slug
from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import AutoscalerConfig, PlacementConfig
from fleetserve.autoscaler.controller import ScalingController
from fleetserve.autoscaler.snapshot import CapacityType
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.canary.versions import VersionState
from fleetserve.clock import FakeClock
from fleetserve.router.stats_board import ReplicaStatsBoard
from tests.application.test_serve_fleet import Counts, Handle
from tests.canary.factories import make_version

STABLE = FleetId("m", "v1")
APP, DEP = "app--m--v2", "model-m--v2"


class FakeServe:
    """Serve's application list and full status, counting each read."""

    def __init__(self):
        self.apps = {"app": {"deployments": {"model-m": {"replicas": []}}}}
        self.name_reads = self.detail_reads = 0

    def names(self):
        self.name_reads += 1
        return list(self.apps)

    def details(self):
        self.detail_reads += 1
        return {"applications": self.apps}


def controller(serve: FakeServe, registry: VersionRegistry, clock: FakeClock) -> ScalingController:
    versions = ServeVersionApps(lambda m: f"app--{m}--", lambda m, v: (f"app--{m}--{version_slug(v)}",
                                                                      f"model-{m}--{version_slug(v)}"),
                                details=serve.details, clock=clock.now, app_names=serve.names)
    fleets = {STABLE.key: {CapacityType.ON_DEMAND: DeploymentRef("app", "model-m")}}
    actuator = ServeFleetActuator(fleets, PlacementConfig(), board=ReplicaStatsBoard(), counts=Counts(),
                                  spot_available=lambda: False, handle_for=lambda ref: Handle([]), versions=versions)
    catalog = RegistryFleetCatalog({"m": "v1"}, registry, versions, version_slug)
    return ScalingController(AutoscalerConfig(), [STABLE], actuator, clock, MemoryCanaryStore(), catalog=catalog)


async def ticks(ctrl: ScalingController, clock: FakeClock, n: int) -> None:
    for _ in range(n):
        await ctrl.tick()
        clock.advance(2.0)  # a tick apart: past the reads' one-tick cache


async def test_no_runtime_version_no_full_status_read():
    serve, clock = FakeServe(), FakeClock(0.0)
    reg = VersionRegistry(MemoryCanaryStore())
    await reg.register(make_version("v1", state=VersionState.STABLE))
    await reg.register(make_version("v3"))  # registered, never deployed: nothing of it in Serve
    ctrl = controller(serve, reg, clock)
    await ticks(ctrl, clock, 5)
    assert serve.detail_reads == 0 and serve.name_reads == 5
    assert [f.key for f in ctrl.fleets] == [STABLE.key]


async def test_a_deployed_version_is_observed_through_the_full_status_once_per_tick_until_it_goes():
    serve, clock = FakeServe(), FakeClock(0.0)
    ctrl = controller(serve, VersionRegistry(MemoryCanaryStore()), clock)  # this process's registry: knows nothing
    await ticks(ctrl, clock, 2)
    assert serve.detail_reads == 0
    serve.apps[APP] = {"deployments": {DEP: {"replicas": [{"replica_id": "r1", "state": "RUNNING"}]}}}
    await ticks(ctrl, clock, 3)
    assert serve.detail_reads == 3  # Serve runs it: planned; whether it runs a replica yet, read every tick
    assert FleetId("m", "v2") in ctrl.fleets
    del serve.apps[APP]
    await ticks(ctrl, clock, 3)
    assert serve.detail_reads == 3 and FleetId("m", "v2") not in ctrl.fleets
