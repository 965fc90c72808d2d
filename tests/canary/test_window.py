"""Step windows: the latency sketch's p95 against the exact one, merging, what counts, and a
window as the A/B totals now minus those saved when it began (two ingress replicas adding up)."""

import random

import pytest

from fleetserve.canary.ab_recorder import ABRecorder
from fleetserve.canary.ab_records import RequestOutcome, ServedRequest, VariantTotals, counts_as
from fleetserve.canary.ab_store import MemoryABStore
from fleetserve.canary.ab_window import arm_window
from fleetserve.canary.rollout_store import RolloutStore
from fleetserve.canary.state import Phase, RolloutState
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.canary.window import GROWTH, LatencySketch, window_id


@pytest.mark.parametrize("seed", range(5))
def test_p95_is_within_one_bucket_of_the_exact_one_and_merging_equals_one_sketch(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(-3, 1) for _ in range(5000)]
    whole, a, b = LatencySketch(), LatencySketch(), LatencySketch()
    for i, v in enumerate(values):
        whole.add(v)
        (a if i % 2 else b).add(v)
    exact = sorted(values)[int(0.95 * len(values)) - 1]
    assert exact <= whole.quantile(0.95) <= exact * GROWTH * 1.0001
    only_a = LatencySketch(dict(a.buckets))
    a.merge(b)
    assert a.buckets == whole.buckets
    assert LatencySketch.from_dict(whole.to_dict()) == whole
    assert LatencySketch().quantile(0.95) is None
    assert whole.minus(b) == only_a  # a window: the later read minus the earlier one
    assert whole.minus(whole) == LatencySketch()


def test_what_counts_as_a_failure():
    assert counts_as("500") is True and counts_as("503") is True and counts_as("200") is False
    assert counts_as("429") is None and counts_as("400") is None and counts_as("499") is None


def test_only_a_serving_canary_has_a_window():
    s = RolloutState("m", "v1", "v2")
    assert window_id(s) is None
    assert window_id(s.moved(Phase.WARMING, 5.0)) is None
    serving = s.moved(Phase.CANARY, 7.0, step_index=1)
    assert window_id(serving) == "v2/canary/1/7.000"
    paused = serving.moved(Phase.PAUSED, 9.0, paused_from=Phase.CANARY)
    assert window_id(paused) == "v2/paused/1/9.000"
    assert window_id(serving.moved(Phase.ROLLED_BACK, 9.0)) is None


async def record(ab: ABRecorder, version: str, n: int, errors: int = 0, ttft: float = 0.1) -> None:
    for i in range(n):
        served = ServedRequest(f"{version}-{i}", "acme", "m", version, 1000.0)
        await ab.record(RequestOutcome(served, error=i < errors, ttft_s=ttft, tpots=(0.01, 0.02)), "v1")


async def test_two_replicas_add_up_and_a_window_counts_only_what_came_after_its_start():
    shared = MemoryABStore()  # as Redis is for every ingress replica
    a, b = ABRecorder(shared), ABRecorder(shared)
    rollouts = RolloutStore(MemoryCanaryStore())
    await record(a, "v2", 5, errors=5, ttft=9.0)  # before the window: neither counted nor timed
    assert await rollouts.window_start("m", "w1") is None
    assert await rollouts.save_window_start("m", "w1", await a.variant_totals("m"))
    assert not await rollouts.save_window_start("m", "w1", {})  # the first save wins
    await record(a, "v2", 3, errors=1)
    await record(b, "v2", 4)
    start, now = await rollouts.window_start("m", "w1"), await b.variant_totals("m")
    arm = arm_window(start.get("v2"), now["v2"])
    assert (arm.requests, arm.errors) == (7, 1)
    assert arm.ttft_p95_s == pytest.approx(0.1, rel=GROWTH - 1) and arm.tpot_p95_s == pytest.approx(0.02, rel=0.04)
    assert arm_window(start.get("v1"), now.get("v1", VariantTotals())).requests == 0
    await rollouts.save_window_start("m", "w2", now)
    await rollouts.drop_windows("m", keep="w2")
    assert await rollouts.window_start("m", "w1") is None and await rollouts.window_start("m", "w2") is not None


def test_counters_below_the_window_start_count_from_zero():
    # Redis lost its data (restarted without persistence): the window restarts, never negative.
    start = VariantTotals.decode({"requests": 100, "errors": 3, "ttft:50": 100})
    now = VariantTotals.decode({"requests": 4, "errors": 1, "ttft:60": 3})
    arm = arm_window(start, now)
    assert (arm.requests, arm.errors) == (4, 1) and arm.ttft_p95_s == pytest.approx(1e-4 * GROWTH ** 60)
