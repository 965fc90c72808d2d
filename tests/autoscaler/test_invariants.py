"""Seeded randomized snapshots: the policy's invariants hold on every one."""

import random

import pytest

from fleetserve.autoscaler.decision import ReplicaRole
from fleetserve.autoscaler.policy import FleetservePolicy, PolicyState
from fleetserve.autoscaler.snapshot import (
    CapacityType,
    InterruptionNotice,
    ModelSnapshot,
    ReplicaState,
    ReplicaView,
    SpotMarket,
)

from tests.autoscaler.factories import make_config


def random_snapshot(rng: random.Random, now: float) -> ModelSnapshot:
    replicas = []
    for i in range(rng.randint(0, 12)):
        state = rng.choice(list(ReplicaState))
        becomes = None
        if state is ReplicaState.STARTING:
            becomes = rng.choice([ReplicaState.ACTIVE, ReplicaState.WARM_STANDBY])
        elif state is ReplicaState.DRAINING:
            becomes = rng.choice([None, ReplicaState.WARM_STANDBY])  # returning to the pool or stopping
        ctype = rng.choice(list(CapacityType))
        running = rng.randint(0, 20) if state in (ReplicaState.ACTIVE, ReplicaState.DRAINING) else 0
        replicas.append(ReplicaView(f"r{i}", state, ctype, running, becomes))
    spot_ids = [r.replica_id for r in replicas if r.capacity_type is CapacityType.SPOT]
    notices = tuple(InterruptionNotice(rid, now + rng.uniform(0, 120)) for rid in spot_ids if rng.random() < 0.3)
    running = sum(r.running for r in replicas)
    return ModelSnapshot(
        model="m",
        queued_at_router=rng.choice([0, 0, rng.randint(0, 200)]),
        running=running,
        arrival_rate=rng.choice([None, rng.uniform(0, 50)]),
        mean_service_time_s=rng.choice([None, rng.uniform(1, 10)]),
        kv_usage=rng.choice([None, rng.random()]),
        replicas=tuple(replicas),
        interruptions=notices,
        spot=SpotMarket(available=rng.random() < 0.7, price_ratio=rng.uniform(0.2, 1.0)),
    )


@pytest.mark.parametrize("seed", range(5))
def test_invariants_hold_on_random_snapshots(seed):
    rng = random.Random(seed)
    cfg = make_config(
        scaling={"min_replicas": rng.randint(0, 2), "max_replicas": rng.randint(3, 10), "downscale_delay_s": rng.choice([0, 30]),
                 "rate_lookahead_s": 60, "downscale_step": rng.randint(1, 3), "downscale_margin": rng.choice([0.0, 0.2]),
                 "upscale_delay_s": rng.choice([0, 10]), "upscale_delay_skip_above": rng.choice([None, 0.5])},
        warm_pool={"min_size": rng.randint(0, 1), "max_size": rng.randint(1, 4), "fraction": rng.choice([0.0, 0.3, 1.0]),
                   "burst_replicas": rng.choice([0, 6])},
        spot={"enabled": True, "on_demand_base": rng.randint(0, 2), "max_spot_share": rng.choice([0.3, 0.5, 0.8]),
              "drain_before_deadline_s": rng.choice([None, 45.0])},
    )
    policy = FleetservePolicy(cfg)
    state, now = PolicyState(), 0.0
    for _ in range(300):
        now += rng.choice([1.0, 5.0, 30.0])
        snap = random_snapshot(rng, now)
        d, state = policy.decide(snap, state, now)
        doomed = {n.replica_id for n in snap.interruptions}
        by_id = {r.replica_id: r for r in snap.replicas}
        # Bounds.
        assert cfg.scaling.min_replicas <= d.target_replicas <= cfg.scaling.max_replicas
        # The fleet the decision leads to.
        drained = {x.replica_id for x in d.drains}
        keep = [r for r in snap.replicas if r.will_serve and r.replica_id not in doomed and r.replica_id not in drained]
        new = [by_id[rid] for rid in d.activate]
        assert all(by_id[rid].state is ReplicaState.WARM_STANDBY for rid in d.activate)
        serving_after = len(keep) + len(new) + d.num_cold_starts(role=ReplicaRole.SERVING)
        healthy_before = sum(1 for r in snap.replicas if r.will_serve and r.replica_id not in doomed)
        assert serving_after <= max(cfg.scaling.max_replicas, healthy_before)
        # Never drain the last replica serving traffic (scale-down drains only).
        active_before = [r for r in snap.replicas if r.state is ReplicaState.ACTIVE and r.replica_id not in doomed]
        active_after = [r for r in active_before if r.replica_id not in drained]
        if snap.has_traffic and active_before:
            assert active_after, "drained the last healthy serving replica"
        # Spot share: new spot never pushes the serving fleet over the limit.
        new_spot = d.num_cold_starts(role=ReplicaRole.SERVING, capacity_type=CapacityType.SPOT)
        if new_spot:
            spot_after = sum(1 for r in keep + new if r.capacity_type is CapacityType.SPOT) + new_spot
            assert spot_after <= cfg.spot.max_spot_share * serving_after + 1e-9
            assert snap.spot.available and snap.spot.price_ratio <= cfg.spot.max_price_ratio
