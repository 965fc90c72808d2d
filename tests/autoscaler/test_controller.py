"""The scaling controller against a fake cluster on a fake clock: warm activation and refill,
scale-down that drains before it removes, spot placement with on-demand fallback, restart
from the store, and the metrics it exports."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import AutoscalerConfig
from fleetserve.autoscaler.controller import ScalingController
from fleetserve.autoscaler.controller_metrics import ControllerMetrics
from fleetserve.autoscaler.controller_state import ScaleOverride
from fleetserve.autoscaler.snapshot import CapacityType, ReplicaState, SpotMarket
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.clock import FakeClock
from tests.autoscaler.factories import make_config
from tests.autoscaler.fake_fleet import FakeFleet

FLEET = FleetId("m", "v1")


def make_controller(clock, fleet, store=None, registry=None, **policy):
    cfg = AutoscalerConfig(defaults=make_config(**policy))
    observer = ControllerMetrics(registry) if registry is not None else None
    return ScalingController(cfg, [FLEET], fleet, clock, store or MemoryCanaryStore(), observer=observer,
                             drain_timeout_s=120)


async def run_until(ctrl, clock, pred, max_ticks=400, step_s=1.0):
    for _ in range(max_ticks):
        await ctrl.tick()
        if pred():
            return
        clock.advance(step_s)
    raise AssertionError("condition not reached")


async def test_burst_wakes_a_standby_at_once_and_the_pool_refills_in_the_background():
    clock = FakeClock(1000.0)
    fleet = FakeFleet(clock, cold_start_s=60)
    fleet.add()
    ctrl = make_controller(clock, fleet, warm_pool={"min_size": 2, "max_size": 2})
    await run_until(ctrl, clock, lambda: len(fleet.standby()) == 2)  # the pool fills: cold start, then park
    assert fleet.actions("start") == [("start", "on_demand", 2)]
    assert len(fleet.serving()) == 1
    fleet.queued = 25  # 3 replicas' worth at 10 per replica
    await ctrl.tick()
    assert len(fleet.serving()) == 3 and fleet.standby() == []  # woken in this tick, no cold start waited for
    assert sorted(c[0] for c in fleet.calls[-3:]) == ["activate", "activate", "start"]
    assert ctrl.status()[FLEET.key]["last_decision"]["activate"]
    await run_until(ctrl, clock, lambda: len(fleet.standby()) == 2)  # refilled
    assert len(fleet.serving()) == 3


async def test_scale_down_drains_the_victim_and_removes_it_only_once_empty():
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock)
    a, b, c = fleet.add(running=8), fleet.add(running=3), fleet.add(running=8)
    ctrl = make_controller(clock, fleet)
    await ctrl.tick()
    for rid in (a, b, c):
        fleet.set_running(rid, 1 if rid == b else 2)
    await run_until(ctrl, clock, lambda: fleet.actions("drain"))
    (drain,) = fleet.actions("drain")
    victim = drain[1]
    assert victim == b  # the least loaded
    clock.advance(30)
    for _ in range(5):
        await ctrl.tick()  # still running: never stopped (the fake raises if it were)
    assert victim in fleet.replicas and not fleet.actions("stop")
    fleet.set_running(victim, 0)
    await ctrl.tick()
    assert fleet.actions("stop") == [("stop", victim)] and victim not in fleet.replicas


async def test_scale_down_returns_the_victim_to_a_short_pool_instead_of_stopping_it():
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock, cold_start_s=600)  # the refill is still loading when load drops
    ids = [fleet.add(running=9) for _ in range(2)]
    ctrl = make_controller(clock, fleet, warm_pool={"min_size": 1, "max_size": 1})
    await ctrl.tick()
    assert fleet.actions("start") == [("start", "on_demand", 1)]  # refill ordered
    for rid in ids:
        fleet.set_running(rid, 0)
    await run_until(ctrl, clock, lambda: fleet.standby())
    assert not fleet.actions("stop") and len(fleet.serving()) == 1
    assert fleet.actions("park")[0][1] in ids  # the drained replica became the standby, ready at once


async def test_spot_for_burst_over_an_on_demand_base_and_fallback_when_spot_is_gone():
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock, cold_start_s=10)
    fleet.add()
    ctrl = make_controller(clock, fleet, spot={"enabled": True, "on_demand_base": 1, "max_spot_share": 0.5})
    fleet.queued = 15
    await ctrl.tick()
    assert fleet.actions("start") == [("start", "spot", 1)]
    await run_until(ctrl, clock, lambda: len(fleet.serving()) == 2)
    assert {r.capacity_type for r in fleet.replicas.values()} == {CapacityType.ON_DEMAND, CapacityType.SPOT}
    fleet.spot = SpotMarket(available=False)
    fleet.queued = 35
    await ctrl.tick()
    assert fleet.actions("start")[-1] == ("start", "on_demand", 2)


async def test_restart_reloads_state_so_nothing_is_started_twice():
    clock = FakeClock(0.0)
    store = MemoryCanaryStore()
    fleet = FakeFleet(clock, cold_start_s=100)
    fleet.add()
    first = make_controller(clock, fleet, store=store, warm_pool={"min_size": 2, "max_size": 2})
    await first.tick()
    assert fleet.actions("start") == [("start", "on_demand", 2)]
    clock.advance(5)
    second = make_controller(clock, fleet, store=store, warm_pool={"min_size": 2, "max_size": 2})
    await second.load()
    await second.tick()
    assert fleet.actions("start") == [("start", "on_demand", 2)]  # the pending refill was remembered
    await run_until(second, clock, lambda: len(fleet.standby()) == 2)
    fresh = make_controller(clock, FakeFleet(clock), store=MemoryCanaryStore(), warm_pool={"min_size": 2, "max_size": 2})
    assert fresh.states[FLEET.key].pending == []  # contrast: without load() nothing is known


async def test_operator_override_sets_bounds_and_pool_and_metrics_follow():
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock, cold_start_s=5)
    fleet.add()
    registry = CollectorRegistry()
    ctrl = make_controller(clock, fleet, registry=registry)
    await ctrl.set_override(FLEET, ScaleOverride(min_replicas=2, max_replicas=4, warm=1))
    await run_until(ctrl, clock, lambda: len(fleet.serving()) == 2 and len(fleet.standby()) == 1)
    await ctrl.tick()
    assert registry.get_sample_value("fleetserve_warm_replicas", {"model": "m", "version": "v1"}) is None  # the ingress's
    assert registry.get_sample_value("fleetserve_target_replicas", {"model": "m", "version": "v1"}) == 2
    assert registry.get_sample_value("fleetserve_serving_replicas",
                                     {"model": "m", "version": "v1", "capacity_type": "on_demand"}) == 2
    assert registry.get_sample_value("fleetserve_scaling_actions_total",
                                     {"model": "m", "version": "v1", "action": "cold_start"}) == 2
    assert ctrl.status()[FLEET.key]["override"] == {"min_replicas": 2, "max_replicas": 4, "warm": 1}


@pytest.mark.parametrize("seed", range(4))
async def test_random_load_never_loses_a_request_and_keeps_bounds(seed):
    import random

    rng = random.Random(seed)
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock, cold_start_s=rng.choice([5, 30, 90]))
    fleet.add()
    ctrl = make_controller(clock, fleet, warm_pool={"min_size": 1, "max_size": 2},
                           spot={"enabled": True, "on_demand_base": 1})
    for step in range(600):
        fleet.queued = rng.choice([0, 0, 5, 20, 60]) if step % 50 < 25 else 0
        for rid, r in list(fleet.replicas.items()):
            fleet.set_running(rid, rng.randint(0, 3) if r.state.value == "active" else
                              max(0, r.running - 1) if r.state.value == "draining" else 0)
        await ctrl.tick()  # the fake raises on a stop or park with requests in flight
        assert 1 <= len(fleet.serving()) <= 10
        clock.advance(rng.choice([1.0, 2.0]))


async def test_when_serve_stops_another_replica_the_drained_one_is_taken_back_into_service():
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock)
    a, b = fleet.add(), fleet.add()
    ctrl = make_controller(clock, fleet)
    await ctrl.tick()
    fleet.stop_another(keep=b, instead=a)  # b was drained and "stopped"; Serve removed a instead
    ctrl.states[FLEET.key].roles.pop(b)
    await ctrl.tick()
    assert ("activate", b) in fleet.calls and fleet.serving() == [b]


async def test_when_serve_stops_the_standby_for_a_scale_down_the_drained_replica_becomes_the_standby():
    """Ray Serve lowers a count by stopping its newest replica, which is the standby here:
    the replica the controller drained takes the standby's place at once, nothing cold-starts,
    and the fleet stays one serving + one standby (it used to loop: refill, scale down, Serve
    stops the fresh standby)."""
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock, serve_stops_newest=True)
    a, b = fleet.add(), fleet.add()
    c = fleet.add(state=ReplicaState.WARM_STANDBY)
    ctrl = make_controller(clock, fleet, scaling={"max_replicas": 2, "downscale_delay_s": 5},
                           warm_pool={"min_size": 1, "max_size": 1})
    await run_until(ctrl, clock, lambda: fleet.actions("stop") != [])
    victim = fleet.actions("stop")[0][1]
    clock.advance(1.0)
    await ctrl.tick()
    assert victim in (a, b) and c not in fleet.replicas  # Serve kept the drained one, removed the standby
    assert fleet.standby() == [victim]  # and it took the standby's place in the same tick
    for _ in range(400):
        clock.advance(1.0)
        await ctrl.tick()
    assert fleet.standby() == [victim] and fleet.serving() == [({a, b} - {victim}).pop()]
    assert fleet.actions("start") == [] and len(fleet.actions("stop")) == 1
    status = ctrl.status()[FLEET.key]
    assert (status["serving"], status["standby"], status["pending"]) == (fleet.serving(), [victim], [])


@pytest.mark.parametrize("seed", range(4))
async def test_random_load_settles_although_serve_picks_which_replica_a_lower_count_stops(seed):
    """Serve cancels a start, else stops the newest replica, whichever one the controller
    drained: after the load the fleet still settles at its floor plus the pool and stays."""
    import random

    rng = random.Random(seed)
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock, cold_start_s=rng.choice([5, 30, 90]), serve_stops_newest=True)
    fleet.add()
    ctrl = make_controller(clock, fleet, scaling={"downscale_delay_s": 10}, warm_pool={"min_size": 1, "max_size": 1})
    for step in range(600):
        fleet.queued = rng.choice([0, 0, 5, 20, 60]) if step % 50 < 25 else 0
        for rid, r in list(fleet.replicas.items()):
            fleet.set_running(rid, rng.randint(0, 3) if r.state.value == "active" else
                              max(0, r.running - 1) if r.state.value == "draining" else 0)
        await ctrl.tick()
        assert 1 <= len(fleet.serving()) <= 10
        clock.advance(rng.choice([1.0, 2.0]))
    fleet.queued = 0
    for rid in fleet.replicas:
        fleet.set_running(rid, 0)
    for _ in range(600):  # quiet: drains finish, stopped replicas stand in or come back
        await ctrl.tick()
        clock.advance(1.0)
    calls = len(fleet.calls)
    for _ in range(300):
        await ctrl.tick()
        clock.advance(1.0)
    assert len(fleet.calls) == calls, fleet.calls[calls:]  # settled: no more starts, stops, parks or wakes
    assert (len(fleet.serving()), len(fleet.standby()), fleet.starting) == (1, 1, [])
    status = ctrl.status()[FLEET.key]
    assert (status["serving"], status["standby"], status["draining"]) == (fleet.serving(), fleet.standby(), {})


async def test_a_spot_replica_gone_while_an_on_demand_stop_is_pending_is_not_stood_in_for():
    """Counts are per deployment: the on-demand replica we stopped takes no spot replica's
    place (that one's interruption is not Serve honouring our lower on-demand count)."""
    clock = FakeClock(0.0)
    fleet = FakeFleet(clock)
    a, b = fleet.add(), fleet.add()
    s = fleet.add(capacity_type=CapacityType.SPOT)
    ctrl = make_controller(clock, fleet, spot={"enabled": True, "on_demand_base": 1})
    await ctrl.tick()
    st = ctrl.states[FLEET.key]
    st.roles.pop(b)
    st.stopping[b] = clock.now()  # b drained and stopped; Serve has not acted yet
    fleet.stop_another(keep=b, instead=s)  # and the spot replica is gone (preempted)
    clock.advance(1.0)
    await ctrl.tick()
    assert ("activate", b) not in fleet.calls and b in ctrl.states[FLEET.key].stopping
