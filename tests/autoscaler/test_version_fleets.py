"""The controller plans every model version (stable and canaries) as its own fleet: each
with its own bounds and warm pool, found through a catalog each tick, and sized for its
traffic weight's share of the model's load. Fake clock, one fake cluster per version."""

from __future__ import annotations

from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import AutoscalerConfig
from fleetserve.autoscaler.controller import ScalingController
from fleetserve.autoscaler.controller_state import ScaleOverride
from fleetserve.autoscaler.version_split import weighted_demand
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.clock import FakeClock
from tests.autoscaler.factories import make_config
from tests.autoscaler.fake_fleet import FakeFleet

STABLE, CANARY = FleetId("m", "v1"), FleetId("m", "v2")


class Versions:
    """One FakeFleet per version behind the FleetActuator contract (dispatch on the fleet)."""

    def __init__(self, clock, **fleets: FakeFleet):
        self.by_key = {FleetId("m", v).key: f for v, f in fleets.items()}

    def __getattr__(self, action):
        async def call(fleet, *args, **kw):
            return await getattr(self.by_key[fleet.key], action)(fleet, *args, **kw)
        return call


class Catalog:
    def __init__(self, weights):
        self.weights = dict(weights)

    async def fleets(self):
        return dict(self.weights)


def make(clock, actuator, catalog, store=None, **policy):
    cfg = AutoscalerConfig(defaults=make_config(**policy))
    return ScalingController(cfg, [STABLE], actuator, clock, store or MemoryCanaryStore(), drain_timeout_s=120,
                             catalog=catalog)


def test_weighted_demand_gives_each_version_its_share_of_the_models_load():
    other = FleetId("n", "v1")
    got = weighted_demand({STABLE: 50, CANARY: 0, other: 7}, {STABLE: 0.75, CANARY: 0.25, other: None})
    assert got == {STABLE: 0, CANARY: 13, other: 0}  # ceil(50 x 0.25): only model m's load counts


async def test_a_canary_is_planned_with_its_own_bounds_and_scales_with_its_weight_step():
    clock = FakeClock(0.0)
    stable, canary = FakeFleet(clock, cold_start_s=30), FakeFleet(clock, cold_start_s=30)
    for _ in range(4):
        stable.add(running=10)
    canary.add()
    catalog = Catalog({STABLE: None})
    ctrl = make(clock, Versions(clock, v1=stable, v2=canary), catalog)
    await ctrl.tick()
    assert CANARY.key not in ctrl.status() and canary.calls == []  # not in the catalog yet: left alone

    catalog.weights = {STABLE: 0.95, CANARY: 0.05}
    await ctrl.tick()
    assert canary.actions("start") == []  # 5 % of 40 is 2 requests: its one replica carries them
    catalog.weights = {STABLE: 0.5, CANARY: 0.5}  # a rollout step: 20 requests' worth now go to v2
    clock.advance(1)
    await ctrl.tick()
    assert canary.actions("start") == [("start", "on_demand", 1)]  # sized for 20 at 10 per replica, at once
    assert stable.actions("start") == []

    await ctrl.set_override(CANARY, ScaleOverride(min_replicas=3, warm=1))  # fleetserve scale m --version v2
    clock.advance(40)
    for _ in range(3):
        await ctrl.tick()
        clock.advance(31)
    assert len(canary.serving()) == 3 and len(canary.standby()) == 1
    assert stable.standby() == []  # the stable version's own pool (none) is untouched

    catalog.weights = {STABLE: None}  # rolled back: the canary is no longer planned
    calls = len(canary.calls)
    await ctrl.tick()
    assert CANARY not in ctrl.fleets and len(canary.calls) == calls


async def test_a_restarted_controller_picks_a_canarys_state_back_up():
    clock, store = FakeClock(0.0), MemoryCanaryStore()
    stable, canary = FakeFleet(clock), FakeFleet(clock)
    stable.add()
    canary.add()
    ctrl = make(clock, Versions(clock, v1=stable, v2=canary), Catalog({STABLE: None, CANARY: 0.1}), store)
    await ctrl.set_override(CANARY, ScaleOverride(max_replicas=1))
    await ctrl.tick()
    again = make(clock, Versions(clock, v1=stable, v2=canary), Catalog({STABLE: None, CANARY: 0.1}), store)
    await again.tick()
    assert again.status()[CANARY.key]["override"] == {"max_replicas": 1}


def spread(fleet: FakeFleet, requests: int) -> None:
    """Put ``requests`` in flight on the fleet's serving replicas, evenly (the router's job)."""
    rids = fleet.serving()
    for i, rid in enumerate(rids):
        fleet.set_running(rid, requests // len(rids) + (1 if i < requests % len(rids) else 0))


async def test_a_canary_at_a_quarter_of_the_split_is_sized_for_its_share_of_the_models_load():
    clock = FakeClock(0.0)
    stable, canary = FakeFleet(clock, cold_start_s=30), FakeFleet(clock, cold_start_s=30)
    for _ in range(8):
        stable.add(running=10)  # 80 requests at 10 per replica
    canary.add()
    ctrl = make(clock, Versions(clock, v1=stable, v2=canary), Catalog({STABLE: 0.75, CANARY: 0.25}))
    await ctrl.tick()
    assert canary.actions("start") == [("start", "on_demand", 1)]  # 20 requests' worth: 2 replicas, at once
    clock.advance(31)
    await ctrl.tick()
    assert len(canary.serving()) == 2 and canary.actions("start") == [("start", "on_demand", 1)]
    assert ctrl.status()[CANARY.key]["last_decision"]["target"] == 2


async def test_the_weight_moving_to_the_canary_scales_it_up_and_the_old_stable_down_within_bounds():
    clock = FakeClock(0.0)
    stable, canary = FakeFleet(clock, cold_start_s=30), FakeFleet(clock, cold_start_s=30)
    for _ in range(8):
        stable.add(running=10)
    canary.add()
    catalog = Catalog({STABLE: 0.75, CANARY: 0.25})
    ctrl = make(clock, Versions(clock, v1=stable, v2=canary), catalog)
    await ctrl.set_override(CANARY, ScaleOverride(max_replicas=6))  # fleetserve scale m --version v2 --max 6
    await ctrl.tick()
    catalog.weights = {STABLE: 0.0, CANARY: 1.0}  # promoted: all of the model's traffic goes to v2
    clock.advance(1)
    await ctrl.tick()
    assert sum(c[2] for c in canary.actions("start")) == 5  # at once, before the requests arrive: up to its max
    for _ in range(300):
        clock.advance(1)
        spread(stable, 0)  # the split moved the requests over
        spread(canary, 80)
        await ctrl.tick()
        assert len(canary.replicas) + len(canary.starting) <= 6  # its bound, even though 80 wants 8
        assert len(stable.serving()) >= 1  # the stable version's min_replicas
    assert len(canary.serving()) == 6
    assert len(stable.replicas) == 1 and stable.actions("stop")  # drained, then removed, down to its min


async def test_a_version_removed_from_the_catalog_is_forgotten_but_an_operator_override_is_kept():
    clock, store = FakeClock(0.0), MemoryCanaryStore()
    stable, canary, third = FakeFleet(clock), FakeFleet(clock), FakeFleet(clock)
    for f in (stable, canary, third):
        f.add()
    v3 = FleetId("m", "v3")
    catalog = Catalog({STABLE: 0.8, CANARY: 0.1, v3: 0.1})
    ctrl = make(clock, Versions(clock, v1=stable, v2=canary, v3=third), catalog, store)
    await ctrl.set_override(v3, ScaleOverride(min_replicas=1, max_replicas=2))
    await ctrl.tick()
    assert {CANARY.key, v3.key} <= set(ctrl.status()) and await store.get("scaling", CANARY.key)

    catalog.weights = {STABLE: 1.0}  # both rolled back and deleted
    calls = (len(canary.calls), len(third.calls))
    await ctrl.tick()
    clock.advance(100)
    await ctrl.tick()
    assert set(ctrl.status()) == {STABLE.key} and ctrl.fleets == [STABLE]
    assert (len(canary.calls), len(third.calls)) == calls  # neither observed nor acted on
    assert await store.get("scaling", CANARY.key) is None  # its replicas' roles mean nothing to a later one
    catalog.weights = {STABLE: 0.9, v3: 0.1}  # v3 redeployed: the operator's bounds come back with it
    await ctrl.tick()
    assert ctrl.status()[v3.key]["override"] == {"min_replicas": 1, "max_replicas": 2}
