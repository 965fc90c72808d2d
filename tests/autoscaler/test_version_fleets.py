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
