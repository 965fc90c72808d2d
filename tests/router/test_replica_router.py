"""Replica choice policy (pure logic, fake replica stats) and the Serve router adapter."""

import random
from collections import Counter

import pytest

from fleetserve.router.replica_policy import ReplicaLoad, affinity_replica, choose, load_score


def loads(*specs, **overrides) -> list[ReplicaLoad]:
    """ReplicaLoad per (waiting, running[, kv]) tuple, ids r0, r1, ..."""
    out = []
    for i, s in enumerate(specs):
        w, r, *kv = s
        out.append(ReplicaLoad(f"r{i}", num_waiting=w, num_running=r, kv_usage=kv[0] if kv else 0.0, **overrides))
    return out


def test_single_and_empty():
    assert choose([], "k", random.Random(0)) == []
    assert choose(loads((5, 5)), None, random.Random(0)) == ["r0"]


def test_power_of_two_prefers_the_less_loaded_of_the_pair():
    rng = random.Random(1)
    pool = loads((0, 1), (10, 30))
    for _ in range(50):
        assert choose(pool, None, rng)[0] == "r0"


def test_power_of_two_never_picks_the_most_loaded_of_many():
    rng = random.Random(2)
    pool = loads((0, 1), (0, 2), (0, 3), (20, 60))
    firsts = Counter(choose(pool, None, rng)[0] for _ in range(400))
    assert firsts["r3"] == 0
    assert firsts["r0"] > firsts["r2"]  # less loaded wins more pairs


def test_waiting_counts_double_and_kv_pressure_penalizes():
    assert load_score(ReplicaLoad("a", num_waiting=2, num_running=0)) > load_score(ReplicaLoad("b", num_running=3))
    assert load_score(ReplicaLoad("a", num_running=1, kv_usage=0.95)) > load_score(ReplicaLoad("b", num_running=5))


def test_live_ongoing_count_overrides_stale_stats():
    stale = ReplicaLoad("a", num_running=0, ongoing=12)
    assert load_score(stale) == 12


def test_prefix_affinity_when_load_is_even():
    rng = random.Random(3)
    pool = loads((0, 4), (0, 4), (0, 5), (0, 4))
    home = affinity_replica("tenant-a:abc", [r.replica_id for r in pool])
    for _ in range(50):
        assert choose(pool, "tenant-a:abc", rng, slack=2)[0] == home


def test_prefix_affinity_yields_to_imbalance():
    rng = random.Random(4)
    pool = loads((0, 1), (0, 1), (0, 1))
    home = affinity_replica("k", [r.replica_id for r in pool])
    overloaded = [ReplicaLoad(r.replica_id, num_running=40 if r.replica_id == home else 1) for r in pool]
    for _ in range(50):
        assert choose(overloaded, "k", rng, slack=2)[0] != home


def test_affinity_is_stable_when_an_unrelated_replica_leaves():
    ids = [f"r{i}" for i in range(8)]
    keys = [f"key-{i}" for i in range(200)]
    before = {k: affinity_replica(k, ids) for k in keys}
    after = {k: affinity_replica(k, ids[:-1]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "r7" for k in moved)  # only keys homed on the removed replica move


def test_affinity_spreads_keys():
    ids = [f"r{i}" for i in range(4)]
    homes = Counter(affinity_replica(f"k{i}", ids) for i in range(400))
    assert set(homes) == set(ids) and min(homes.values()) > 50


def test_draining_replicas_are_skipped():
    rng = random.Random(5)
    pool = [ReplicaLoad("a", accepting=False), ReplicaLoad("b", num_running=30)]
    for _ in range(20):
        assert choose(pool, None, rng) == ["b"]


def test_standby_replicas_are_never_chosen_even_when_nothing_else_accepts():
    rng = random.Random(5)
    pool = [ReplicaLoad("s", standby=True), ReplicaLoad("b", num_running=30), ReplicaLoad("d", accepting=False)]
    for _ in range(20):
        assert choose(pool, None, rng) == ["b"]
    only_parked = [ReplicaLoad("s", accepting=False, standby=True), ReplicaLoad("d", accepting=False)]
    assert choose(only_parked, None, rng) == ["d"]  # a draining one refuses and Serve retries; a standby never


def test_serve_router_subclass_is_a_request_router():
    ray_router = pytest.importorskip("ray.serve.request_router")
    from fleetserve.router.replica_router import FleetReplicaRouter

    assert issubclass(FleetReplicaRouter, ray_router.RequestRouter)
