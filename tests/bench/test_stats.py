"""bench/_stats.py: the percentile and the bootstrap interval the overload bench reports."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_stats", Path(__file__).resolve().parents[2] / "bench" / "_stats.py")
stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stats)


def test_pct_is_nearest_rank():
    xs = list(range(1, 101))  # 1..100
    assert stats.pct(xs, 0.5) == 51  # round(0.5 * 99) = 50 -> the 51st value
    assert stats.pct(xs, 0.99) == 99  # the 2nd-largest of 100
    assert stats.pct(xs, 1.0) == 100
    assert stats.pct([], 0.5) is None


def test_constant_samples_give_a_degenerate_interval():
    iv = stats.ratio_interval([3.0] * 50, [1.0] * 50, target=2.0, iters=200)
    assert iv["ratio"] == iv["lo"] == iv["hi"] == 3.0
    assert iv["p_at_most_target"] == 0.0
    iv = stats.ratio_interval([1.5] * 50, [1.0] * 50, target=2.0, iters=200)
    assert iv["p_at_most_target"] == 1.0


def test_interval_brackets_the_point_ratio_and_widens_with_fewer_samples():
    import random

    rng = random.Random(1)
    big_num = [rng.expovariate(1.0) for _ in range(2000)]
    big_den = [rng.expovariate(1.0) for _ in range(2000)]
    small = stats.ratio_interval(big_num[:100], big_den[:100], iters=500, seed=3)
    big = stats.ratio_interval(big_num, big_den, iters=500, seed=3)
    for iv in (small, big):
        assert iv["lo"] <= iv["ratio"] <= iv["hi"]
    assert big["hi"] - big["lo"] < small["hi"] - small["lo"]
    assert big["lo"] < 1.0 < big["hi"]  # same distribution: a ratio of 1 is inside


def test_deterministic_for_a_seed_and_none_for_empty():
    a, b = [1.0, 2.0, 3.0, 10.0], [1.0, 1.5, 2.0]
    assert stats.ratio_interval(a, b, seed=7, iters=100) == stats.ratio_interval(a, b, seed=7, iters=100)
    assert stats.ratio_interval([], b) is None
    assert stats.ratio_interval(a, []) is None


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_level_sets_the_interval_width(level):
    import random

    rng = random.Random(2)
    num = [rng.expovariate(1.0) for _ in range(300)]
    den = [rng.expovariate(1.0) for _ in range(300)]
    narrow = stats.ratio_interval(num, den, level=level, iters=400)
    wide = stats.ratio_interval(num, den, level=0.99, iters=400)
    assert wide["lo"] <= narrow["lo"] and narrow["hi"] <= wide["hi"]
