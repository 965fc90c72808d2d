"""Step-window counts: the latency sketch's p95 against the exact one, merging, what counts."""

import random

import pytest

from fleetserve.canary.outcomes import OutcomeRecorder, counts_as
from fleetserve.canary.rollout_store import RolloutStore
from fleetserve.canary.state import Phase, RolloutState
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.canary.window import GROWTH, ArmCounts, LatencySketch, window_id


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
    a.merge(b)
    assert a.buckets == whole.buckets
    assert LatencySketch.from_dict(whole.to_dict()) == whole
    assert LatencySketch().quantile(0.95) is None


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


async def test_two_recorders_add_up_and_a_new_window_starts_empty():
    store = RolloutStore(MemoryCanaryStore())
    current = {"m": "w1"}
    a, b = OutcomeRecorder(current.get, "a"), OutcomeRecorder(current.get, "b")
    for rec, n in ((a, 3), (b, 4)):
        for _ in range(n):
            rec.record("m", "v2", "200", 0.1, [0.01, 0.02])
        rec.record("m", "v2", "500", None)
        rec.record("x", "v1", "200", 0.1)  # no window for this model: not recorded
        await rec.flush(store)
    arms = await store.window_arms("m", "w1")
    assert arms.arm("v2").requests == 9 and arms.arm("v2").errors == 2 and arms.arm("v1").requests == 0
    a.record("m", "v2", "200", 0.1)
    await a.flush(store)  # cumulative per source: overwrites its own row
    assert (await store.window_arms("m", "w1")).arm("v2").requests == 10
    current["m"] = "w2"
    await a.flush(store)
    assert not a._counts  # the old window is forgotten
    assert (await store.window_arms("m", "w2")).arm("v2").requests == 0
    counts = ArmCounts()
    counts.record(False, 0.2, [0.01])
    assert ArmCounts.from_dict(counts.to_dict()) == counts
