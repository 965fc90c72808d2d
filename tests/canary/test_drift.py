"""PSI over shared bins, and the binning helpers for the three drift features."""

import math

import numpy as np
import pytest

from fleetserve.canary.drift import FIRST_TOKEN, OUTPUT_LENGTH, PROMPT_LENGTH, Binning, default_binnings, psi


def test_identical_distributions_have_psi_zero():
    assert psi([10, 20, 30, 40], [10, 20, 30, 40]) == 0.0
    assert psi([10, 20, 30, 40], [20, 40, 60, 80]) == pytest.approx(0.0)  # same shares, other total


def test_a_known_shift_by_hand():
    # expected shares .25 each; actual .1 .2 .3 .4:
    # (.1-.25)ln(.4) + (.2-.25)ln(.8) + (.3-.25)ln(1.2) + (.4-.25)ln(1.6)
    # = 0.137444 + 0.011157 + 0.009116 + 0.070501 = 0.228218
    assert psi([250, 250, 250, 250], [100, 200, 300, 400]) == pytest.approx(0.228218, abs=1e-6)


def test_an_empty_bin_is_floored_at_epsilon_not_infinite():
    # shares (.5, .5) vs (1, 0) with epsilon 1e-4: (1-.5)ln(1/.5) + (1e-4-.5)ln(1e-4/.5)
    expected = 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi([5, 5], [10, 0]) == pytest.approx(expected)
    assert psi([5, 5], [10, 0], epsilon=1e-3) < psi([5, 5], [10, 0])


def test_psi_refuses_mismatched_or_empty_bins():
    with pytest.raises(ValueError, match="same non-empty bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive total"):
        psi([0, 0], [1, 1])


def test_numeric_quantile_bins_split_the_reference_evenly_and_catch_a_shift():
    rng = np.random.default_rng(3)
    stable = rng.lognormal(5, 0.6, 20_000).round()
    binning = Binning.numeric(stable, bins=10)
    counts = binning.counts(stable)
    assert binning.num_bins == 10 and max(counts) - min(counts) < 0.02 * len(stable)
    same = rng.lognormal(5, 0.6, 20_000).round()
    longer = rng.lognormal(5.5, 0.6, 20_000).round()  # prompts 65 % longer
    assert psi(counts, binning.counts(same)) < 0.01
    assert psi(counts, binning.counts(longer)) > 0.2


def test_edges_are_half_open_and_the_outer_bins_are_unbounded():
    b = Binning("numeric", edges=(10.0, 20.0))
    assert b.counts([-5, 9.99, 10, 19.99, 20, 1e9]) == (2, 2, 2)


def test_categorical_bins_keep_the_top_values_and_an_other_bin():
    b = Binning.categorical([7, 7, 7, 3, 3, 9, 1], top_k=2)
    assert b.categories == (3, 7) and b.counts([3, 7, 7, 9, 100]) == (1, 2, 2)


def test_binnings_round_trip_and_cover_the_three_features():
    rng = np.random.default_rng(5)
    bins = default_binnings(rng.integers(1, 500, 1000), rng.integers(1, 200, 1000), rng.integers(0, 50, 1000))
    assert set(bins) == {PROMPT_LENGTH, OUTPUT_LENGTH, FIRST_TOKEN}
    for b in bins.values():
        assert Binning.from_dict(b.to_dict()) == b
