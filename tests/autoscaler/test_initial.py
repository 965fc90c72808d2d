"""A deployment under the scaling controller starts at the policy's own first plan, so the
controller's first count changes nothing (no replica started at deploy time only to be
stopped, or started twice)."""

from __future__ import annotations

from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import AutoscalerConfig
from fleetserve.autoscaler.controller import ScalingController
from fleetserve.autoscaler.initial import initial_replicas
from fleetserve.autoscaler.snapshot import CapacityType
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.clock import FakeClock
from tests.autoscaler.fake_fleet import FakeFleet

OD, SPOT = CapacityType.ON_DEMAND, CapacityType.SPOT


def policy(**defaults):
    return AutoscalerConfig.model_validate({"defaults": defaults}).defaults


def test_the_plan_is_the_serving_minimum_plus_the_warm_pool():
    p = policy(scaling={"min_replicas": 1, "max_replicas": 3}, warm_pool={"min_size": 1, "max_size": 1})
    assert initial_replicas(p) == {OD: 2}
    assert initial_replicas(policy(scaling={"min_replicas": 3, "max_replicas": 4})) == {OD: 3}


def test_with_spot_the_on_demand_share_is_the_base():
    p = policy(scaling={"min_replicas": 2, "max_replicas": 2}, spot={"enabled": True, "on_demand_base": 1})
    assert initial_replicas(p) == {OD: 1, SPOT: 1}


async def test_a_fleet_started_at_the_plan_gets_no_further_start_from_the_controller():
    clock = FakeClock(0.0)
    p = policy(scaling={"min_replicas": 1, "max_replicas": 3}, warm_pool={"min_size": 1, "max_size": 1})
    fleet = FakeFleet(clock, cold_start_s=5)
    ctrl = ScalingController(AutoscalerConfig(defaults=p), [FleetId("m", "v1")], fleet, clock, MemoryCanaryStore())
    await ctrl.tick()  # what the controller asks of an empty fleet on its first tick
    first = ctrl.status()["m@v1"]["pending"]
    assert len(first) == sum(initial_replicas(p).values())
    for _ in range(40):
        clock.advance(0.5)
        await ctrl.tick()
    st = ctrl.status()["m@v1"]
    assert len(st["serving"]) == 1 and len(st["standby"]) == 1 and not st["pending"] and not st["draining"]
