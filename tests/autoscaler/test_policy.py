from fleetserve.autoscaler.decision import DrainReason, ReplicaRole
from fleetserve.autoscaler.hysteresis import HysteresisScaler, HysteresisState
from fleetserve.autoscaler.policy import FleetservePolicy, PolicyState
from fleetserve.autoscaler.snapshot import CapacityType, InterruptionNotice, ReplicaState, ReplicaView, SpotMarket
from fleetserve.clock import FakeClock

from tests.autoscaler.factories import active, make_config, make_snapshot, standby


def test_scales_up_at_once_and_down_only_after_the_delay():
    clock = FakeClock()
    policy = FleetservePolicy(make_config(scaling={"downscale_delay_s": 60, "downscale_cooldown_s": 0}))
    state = PolicyState()
    reps = (active("a0"),)
    d, state = policy.decide(make_snapshot(running=35, replicas=reps), state, clock.now())
    assert d.target_replicas == 4 and d.num_cold_starts() == 3  # fast up: no delay
    reps = tuple(active(f"a{i}") for i in range(4))
    for _ in range(6):  # load drops to 1 replica's worth at t=10: nothing until t=70
        clock.advance(10)
        d, state = policy.decide(make_snapshot(running=8, replicas=reps), state, clock.now())
        assert d.target_replicas == 4 and not d.drains
    clock.advance(10)  # t=70: 60 s below the band
    d, state = policy.decide(make_snapshot(running=8, replicas=reps), state, clock.now())
    assert d.target_replicas == 3 and len(d.drains) == 1  # one step at a time


def test_hysteresis_band_holds_small_dips():
    scaler = HysteresisScaler(make_config(scaling={"downscale_delay_s": 0, "downscale_margin": 0.3}).scaling)
    n, st = scaler.apply(10, 8, HysteresisState(), 0.0)  # 8 > floor(10 * 0.7): inside the band
    assert n == 10 and st.below_since is None
    n, st = scaler.apply(10, 6, HysteresisState(), 0.0)
    assert n == 9


def test_a_spike_in_between_resets_the_scale_down_timer():
    clock = FakeClock()
    policy = FleetservePolicy(make_config(scaling={"downscale_delay_s": 30}))
    reps = tuple(active(f"a{i}") for i in range(4))
    state = PolicyState()
    _, state = policy.decide(make_snapshot(running=5, replicas=reps), state, clock.now())
    clock.advance(20)
    _, state = policy.decide(make_snapshot(running=40, replicas=reps), state, clock.now())
    clock.advance(20)
    d, state = policy.decide(make_snapshot(running=5, replicas=reps), state, clock.now())
    assert d.target_replicas == 4  # the low streak restarted 0 s ago, not 40 s ago


def test_warm_pool_is_consumed_first_and_refilled():
    policy = FleetservePolicy(make_config(warm_pool={"min_size": 2, "max_size": 2}))
    reps = (active("a0"), standby("s1"), standby("s2"))
    d, _ = policy.decide(make_snapshot(running=40, replicas=reps), PolicyState(), 0.0)
    assert d.target_replicas == 4
    assert d.activate == ("s1", "s2")
    assert d.num_cold_starts(role=ReplicaRole.SERVING) == 1
    assert d.refill == 2  # pool emptied: start two standbys in the background


def test_pending_standbys_count_toward_the_pool():
    policy = FleetservePolicy(make_config(warm_pool={"min_size": 2, "max_size": 2}))
    pending = ReplicaView("p", ReplicaState.STARTING, becomes=ReplicaState.WARM_STANDBY)
    d, _ = policy.decide(make_snapshot(running=5, replicas=(active("a0"), standby("s1"), pending)), PolicyState(), 0.0)
    assert d.is_noop


def test_scale_down_returns_replicas_to_a_short_pool():
    policy = FleetservePolicy(make_config(scaling={"downscale_delay_s": 0}, warm_pool={"min_size": 1, "max_size": 1}))
    reps = (active("a0", running=3), active("a1", running=0), active("a2", running=2))
    d, _ = policy.decide(make_snapshot(running=5, replicas=reps), PolicyState(), 0.0)
    assert [x.replica_id for x in d.drains] == ["a1"]  # least loaded
    assert d.drains[0].return_to_pool and d.refill == 0


def test_spot_is_burst_above_the_on_demand_base_within_its_share():
    policy = FleetservePolicy(make_config(spot={"enabled": True, "on_demand_base": 2, "max_spot_share": 0.5}))
    d, _ = policy.decide(make_snapshot(running=60, replicas=(active("a0"),)), PolicyState(), 0.0)
    assert d.num_cold_starts(capacity_type=CapacityType.ON_DEMAND) == 2  # a0 + 1 = base, +1 with 3 spot = 50%
    assert d.num_cold_starts(capacity_type=CapacityType.SPOT) == 3


def test_falls_back_to_on_demand_when_spot_is_unavailable_or_too_expensive():
    policy = FleetservePolicy(make_config(spot={"enabled": True, "on_demand_base": 0, "max_spot_share": 1.0, "max_price_ratio": 0.5}))
    for market in (SpotMarket(available=False), SpotMarket(available=True, price_ratio=0.8)):
        d, _ = policy.decide(make_snapshot(running=30, replicas=(active("a0"),), spot=market), PolicyState(), 0.0)
        assert d.num_cold_starts(capacity_type=CapacityType.SPOT) == 0
        assert d.num_cold_starts(capacity_type=CapacityType.ON_DEMAND) == 2


def test_interruption_drains_migrates_and_replaces():
    policy = FleetservePolicy(make_config(spot={"enabled": True, "on_demand_base": 1, "migration_margin_s": 15}))
    reps = (active("a0", running=5), active("s0", CapacityType.SPOT, running=5))
    snap = make_snapshot(running=20, replicas=reps, interruptions=(InterruptionNotice("s0", 120.0),),
                         spot=SpotMarket(available=False))
    d, _ = policy.decide(snap, PolicyState(), 0.0)
    (drain,) = d.drains
    assert drain.replica_id == "s0" and drain.reason is DrainReason.SPOT_INTERRUPTION
    assert drain.migrate_by == 105.0  # in-flight requests move before the deadline
    assert d.num_cold_starts(capacity_type=CapacityType.ON_DEMAND) == 1  # replacement, on-demand fallback


def test_interruption_wakes_a_standby_as_the_replacement():
    policy = FleetservePolicy(make_config(warm_pool={"min_size": 1, "max_size": 1}, spot={"enabled": True}))
    reps = (active("a0", running=5), active("s0", CapacityType.SPOT, running=5), standby("w"))
    snap = make_snapshot(running=20, replicas=reps, interruptions=(InterruptionNotice("s0", 120.0),))
    d, _ = policy.decide(snap, PolicyState(), 0.0)
    assert d.activate == ("w",) and d.refill == 1


def test_last_serving_replica_keeps_serving_under_notice_until_the_deadline_nears():
    policy = FleetservePolicy(make_config(spot={"enabled": True, "on_demand_base": 0, "migration_margin_s": 15}))
    snap = make_snapshot(running=3, replicas=(active("s0", CapacityType.SPOT, 3),), interruptions=(InterruptionNotice("s0", 120.0),))
    d, _ = policy.decide(snap, PolicyState(), 0.0)
    assert not d.drains and d.num_cold_starts() == 1
    d, _ = policy.decide(snap, PolicyState(), 95.0)  # within 2 margins of the deadline: migrate now
    assert d.drains and d.drains[0].migrate_by == 105.0


def test_state_round_trips_through_a_dict():
    policy = FleetservePolicy(make_config(scaling={"downscale_delay_s": 30}))
    reps = tuple(active(f"a{i}") for i in range(4))
    _, state = policy.decide(make_snapshot(running=5, replicas=reps, arrival_rate=3.0), PolicyState(), 7.0)
    assert PolicyState.from_dict(state.to_dict()) == state


def test_warm_pool_is_sized_relative_to_the_serving_target():
    pool = make_config(warm_pool={"min_size": 1, "max_size": 5, "fraction": 0.25}).warm_pool
    assert [pool.target_size(n) for n in (0, 4, 5, 12, 40)] == [1, 1, 2, 3, 5]


def test_pool_surplus_cancels_loading_standbys_before_loaded_ones():
    policy = FleetservePolicy(make_config(warm_pool={"min_size": 1, "max_size": 4, "fraction": 0.5}))
    pending = ReplicaView("p9", ReplicaState.STARTING, becomes=ReplicaState.WARM_STANDBY)
    reps = (active("a0"), active("a1"), standby("s1"), standby("s2"), pending)  # 2 serving -> pool of 1
    d, _ = policy.decide(make_snapshot(running=15, replicas=reps), PolicyState(), 0.0)
    assert d.target_replicas == 2
    assert [x.replica_id for x in d.drains] == ["p9", "s2"] and d.refill == 0


def test_upscale_tolerance_lets_spare_slots_absorb_small_excess():
    policy = FleetservePolicy(make_config(scaling={"upscale_tolerance": 0.1}))
    reps = tuple(active(f"a{i}") for i in range(4))  # capacity 40 at the target
    d, _ = policy.decide(make_snapshot(running=43, replicas=reps), PolicyState(), 0.0)
    assert d.target_replicas == 4 and d.is_noop
    d, _ = policy.decide(make_snapshot(running=45, replicas=reps), PolicyState(), 0.0)
    assert d.target_replicas == 5


def test_burst_floor_pool_is_big_for_a_small_fleet_and_shrinks_as_serving_grows():
    pool = make_config(warm_pool={"min_size": 0, "max_size": 20, "fraction": 0.1, "burst_replicas": 21}).warm_pool
    # serving + standby >= 21 while the fleet is small; the fraction takes over at the top.
    assert [pool.target_size(n) for n in (1, 3, 10, 19, 21, 30)] == [20, 18, 11, 2, 3, 3]
    assert make_config(warm_pool={"max_size": 4, "burst_replicas": 21}).warm_pool.target_size(3) == 4  # capped


def test_replicas_draining_back_to_the_pool_are_not_refilled_again():
    policy = FleetservePolicy(make_config(warm_pool={"min_size": 2, "max_size": 2}))
    back = ReplicaView("d1", ReplicaState.DRAINING, running=3, becomes=ReplicaState.WARM_STANDBY)
    gone = ReplicaView("d2", ReplicaState.DRAINING, running=3)  # stops once empty
    d, _ = policy.decide(make_snapshot(running=8, replicas=(active("a0"), standby("s1"), back, gone)), PolicyState(), 0.0)
    assert d.refill == 0  # s1 + d1 on its way back = 2
    d, _ = policy.decide(make_snapshot(running=8, replicas=(active("a0"), standby("s1"), gone)), PolicyState(), 0.0)
    assert d.refill == 1


def test_replica_under_notice_keeps_serving_until_the_drain_point():
    policy = FleetservePolicy(make_config(
        spot={"enabled": True, "on_demand_base": 1, "migration_margin_s": 15, "drain_before_deadline_s": 45}))
    reps = (active("a0", running=5), active("s0", CapacityType.SPOT, running=5))
    snap = make_snapshot(running=20, replicas=reps, interruptions=(InterruptionNotice("s0", 120.0),),
                         spot=SpotMarket(available=False))
    clock = FakeClock()
    d, state = policy.decide(snap, PolicyState(), clock.now())
    assert not d.drains  # still admitting: its slots bridge the replacement's cold start
    assert d.num_cold_starts(capacity_type=CapacityType.ON_DEMAND) == 1  # replacement requested at once
    clock.advance(75)  # 45 s before the deadline
    d, _ = policy.decide(snap, state, clock.now())
    (drain,) = d.drains
    assert drain.replica_id == "s0" and drain.migrate_by == 105.0


def test_upscale_delay_filters_blips_but_not_surges():
    scaler = HysteresisScaler(make_config(scaling={"upscale_delay_s": 10, "upscale_delay_skip_above": 0.5}).scaling)
    clock = FakeClock()
    target, st = scaler.apply(4, 5, HysteresisState(), clock.now())
    assert target == 4  # +25%: wait
    clock.advance(10)
    target, st = scaler.apply(4, 5, st, clock.now())
    assert target == 5  # still wanted after the delay
    target, _ = scaler.apply(4, 7, HysteresisState(), clock.now())
    assert target == 7  # +75%: a surge, no delay
