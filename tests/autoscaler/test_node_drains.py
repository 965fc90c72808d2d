"""Ray's node drains reach the replicas: the controller reads the draining nodes (a fake
node source here, Ray's GCS in the actor), gives each replica on them an interruption
notice, drains it in migrate mode, replaces it, and stops it once empty."""

from __future__ import annotations

from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import AutoscalerConfig
from fleetserve.autoscaler.controller import ScalingController
from fleetserve.autoscaler.node_drains import NodeDrain, interruptions_on_draining_nodes
from fleetserve.autoscaler.snapshot import CapacityType, InterruptionNotice, SpotMarket
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.clock import FakeClock
from tests.autoscaler.factories import make_config
from tests.autoscaler.fake_fleet import FakeFleet

FLEET = FleetId("m", "v1")
WALL0 = 1_700_000_000.0  # the wall clock at the fake clock's 0


class FakeNodeDrains:
    """What Ray's GCS would say: node id -> drain; ``fail`` makes the read raise."""

    def __init__(self):
        self.drains: dict[str, NodeDrain] = {}
        self.fail = False

    def draining_nodes(self):
        if self.fail:
            raise ConnectionError("GCS unreachable")
        return dict(self.drains)


def make(clock, fleet, source, **policy):
    cfg = AutoscalerConfig(defaults=make_config(**policy))
    return ScalingController(cfg, [FLEET], fleet, clock, MemoryCanaryStore(), drain_timeout_s=120,
                             node_drains=source, wall_clock=lambda: WALL0 + clock.now())


class Row:
    def __init__(self, rid, node):
        self.replica_id, self.node_id = rid, node


def test_notices_carry_the_deadline_onto_the_controller_clock():
    rows = [Row("a", "n1"), Row("b", "n2"), Row("c", None)]
    drains = {"n2": NodeDrain("n2", WALL0 + 90), "n3": NodeDrain("n3")}
    assert interruptions_on_draining_nodes(rows, drains, now=500.0, wall_now=WALL0, no_deadline_s=15) == (
        InterruptionNotice("b", 590.0),)
    drains = {"n1": NodeDrain("n1"), "n2": NodeDrain("n2", WALL0 - 5)}  # none set; already past
    assert interruptions_on_draining_nodes(rows, drains, now=500.0, wall_now=WALL0, no_deadline_s=15) == (
        InterruptionNotice("a", 515.0), InterruptionNotice("b", 500.0))


async def test_a_ray_node_drain_migrates_its_replica_replaces_it_and_stops_it_once_empty():
    clock, source = FakeClock(0.0), FakeNodeDrains()
    fleet = FakeFleet(clock, cold_start_s=30)
    od = fleet.add(running=5)
    spot = fleet.add(capacity_type=CapacityType.SPOT, running=5)
    ctrl = make(clock, fleet, source, scaling={"min_replicas": 2}, spot={"enabled": True, "max_spot_share": 0.5})
    await ctrl.tick()
    assert fleet.actions("drain") == [] and fleet.actions("start") == []

    source.drains = {"node-spot": NodeDrain("node-spot", WALL0 + clock.advance(1) + 120)}
    fleet.spot = SpotMarket(available=False)  # the only spot node is draining: nowhere to place spot
    await ctrl.tick()
    assert fleet.actions("drain") == [("drain", spot, "migrate")]  # at once: drain_before_deadline_s is unset
    assert fleet.actions("start") == [("start", "on_demand", 1)]  # its replacement, on-demand
    assert ctrl.status()[FLEET.key]["draining"][spot]["reason"] == "spot_interruption"

    clock.advance(1)
    await ctrl.tick()
    assert fleet.actions("stop") == [] and len(fleet.actions("drain")) == 1  # still busy; drained once
    fleet.set_running(spot, 0)  # its requests were handed back
    clock.advance(1)
    await ctrl.tick()
    assert fleet.actions("stop") == [("stop", spot)]
    clock.advance(30)
    await ctrl.tick()
    assert len(fleet.serving()) == 2 and spot not in fleet.replicas and od in fleet.serving()


async def test_the_last_serving_replica_keeps_serving_until_near_the_deadline():
    clock, source = FakeClock(0.0), FakeNodeDrains()
    fleet = FakeFleet(clock, cold_start_s=300)
    only = fleet.add(running=3)
    ctrl = make(clock, fleet, source, spot={"migration_margin_s": 15})
    source.drains = {"node-on_demand": NodeDrain("node-on_demand", WALL0 + 100)}
    await ctrl.tick()
    assert fleet.actions("drain") == [] and fleet.actions("start") == [("start", "on_demand", 1)]
    clock.advance(71)  # 29 s left: within 2 x the margin
    await ctrl.tick()
    assert fleet.actions("drain") == [("drain", only, "migrate")]


async def test_a_scale_down_drain_turns_into_a_migration_when_its_node_is_drained():
    clock, source = FakeClock(0.0), FakeNodeDrains()
    fleet = FakeFleet(clock)
    a, b = fleet.add(running=1), fleet.add(capacity_type=CapacityType.SPOT, running=1)
    ctrl = make(clock, fleet, source, scaling={"downscale_delay_s": 0, "downscale_cooldown_s": 0},
                spot={"enabled": True})
    for _ in range(3):
        await ctrl.tick()
        clock.advance(1)
    assert fleet.actions("drain") == [("drain", b)]  # scale-down: the spot surplus, requests finish
    source.drains = {"node-spot": NodeDrain("node-spot", WALL0 + clock.now() + 60)}
    await ctrl.tick()
    assert fleet.actions("drain") == [("drain", b), ("drain", b, "migrate")]


async def test_an_unreadable_gcs_skips_the_notices_not_the_tick():
    clock, source = FakeClock(0.0), FakeNodeDrains()
    fleet = FakeFleet(clock)
    fleet.add()
    fleet.queued = 25
    source.fail = True
    ctrl = make(clock, fleet, source)
    await ctrl.tick()
    assert fleet.actions("start")  # scaled up all the same


async def test_a_stopped_replica_still_up_until_serve_acts_is_neither_woken_nor_planned():
    from dataclasses import replace

    from fleetserve.autoscaler.snapshot import ReplicaState

    clock, source = FakeClock(0.0), FakeNodeDrains()
    fleet = FakeFleet(clock, cold_start_s=5)
    fleet.add()
    spot = fleet.add(capacity_type=CapacityType.SPOT)
    ctrl = make(clock, fleet, source, scaling={"min_replicas": 2}, spot={"enabled": True})
    source.drains = {"node-spot": NodeDrain("node-spot")}
    fleet.spot = SpotMarket(available=False)
    await ctrl.tick()
    clock.advance(1)
    await ctrl.tick()  # empty: stopped
    assert fleet.actions("stop") == [("stop", spot)]
    row = replace(fleet.replicas.get(spot) or next(iter(fleet.replicas.values())), replica_id=spot,
                  state=ReplicaState.DRAINING, capacity_type=CapacityType.SPOT, node_id="node-spot")
    fleet.replicas[spot] = row  # Serve has not removed it yet
    calls = len(fleet.calls)
    for _ in range(3):
        clock.advance(1)
        await ctrl.tick()
    assert [c for c in fleet.calls[calls:] if c[1] == spot] == []  # not woken, drained or stopped again
