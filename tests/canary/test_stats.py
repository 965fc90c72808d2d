"""A/B statistics: textbook examples reproduced, A/A false positives at alpha, power at the formula's n."""

import math

import numpy as np
import pytest

from fleetserve.canary.stats import sample_size_per_arm, two_proportion_ztest, z_quantile

EXPERIMENTS = 2000


def test_ci_matches_openintro_cpr_example():
    # OpenIntro Statistics (4th ed.), section 6.2, CPR + blood thinner (Bottiger et al. 2001):
    # control 11 of 50 survived, treatment 14 of 40. By hand: diff = 0.35 - 0.22 = 0.13,
    # SE = sqrt(.35*.65/40 + .22*.78/50) = sqrt(0.0056875 + 0.003432) = 0.09550,
    # 95% CI = 0.13 +- 1.96 * 0.0955 = (-0.0572, 0.3172); the book, with SE rounded to
    # 0.095, prints (-0.056, 0.316).
    r = two_proportion_ztest(11, 50, 14, 40)
    assert r.diff == pytest.approx(0.13)
    se = math.sqrt(0.35 * 0.65 / 40 + 0.22 * 0.78 / 50)
    assert se == pytest.approx(0.09550, abs=5e-5)
    assert (r.ci_low, r.ci_high) == pytest.approx((0.13 - 1.959964 * se, 0.13 + 1.959964 * se), abs=1e-6)
    assert (r.ci_low, r.ci_high) == pytest.approx((-0.056, 0.316), abs=0.002)


def test_ztest_matches_openintro_mammogram_example():
    # OpenIntro Statistics (4th ed.), section 6.2, mammograms (Miller et al. 2014):
    # 500 of 44,925 died in the mammogram group, 505 of 44,910 in the control group.
    # By hand: pooled p = 1005/89835 = 0.011187, SE = sqrt(p(1-p)(1/44925 + 1/44910)) =
    # 0.0007018, diff = 0.011130 - 0.011245 = -0.000115, z = -0.164, two-sided p = 0.870.
    # (The book works with rounded intermediates, so its printed z, about -0.17, differs in the
    # second digit; the check below is against the unrounded hand computation.)
    r = two_proportion_ztest(505, 44910, 500, 44925)  # a = control, b = mammogram
    pooled = 1005 / 89835
    se = math.sqrt(pooled * (1 - pooled) * (1 / 44925 + 1 / 44910))
    assert se == pytest.approx(0.0007018, rel=1e-3)
    assert r.z == pytest.approx((500 / 44925 - 505 / 44910) / se)
    assert r.z == pytest.approx(-0.164, abs=0.001)
    assert r.p_value == pytest.approx(0.870, abs=0.002) and not r.significant


def test_sample_size_matches_the_formula_by_hand():
    # Kohavi et al. (2009), "Controlled experiments on the web": n = 16 sigma^2 / delta^2 for
    # alpha = 0.05, power = 0.8; the exact constant is 2 (1.959964 + 0.841621)^2 = 15.698.
    assert 2 * (z_quantile(0.975) + z_quantile(0.8)) ** 2 == pytest.approx(15.698, abs=1e-3)
    # baseline 10 %, MDE 2 points: p = 0.11, n = 15.6978 * 0.11 * 0.89 / 0.02^2 = 3842.03 -> 3843.
    assert sample_size_per_arm(0.10, 0.02) == 3843
    # baseline 50 %, MDE 5 points: p = 0.525, n = 15.6978 * 0.249375 / 0.0025 = 1565.85 -> 1566.
    assert sample_size_per_arm(0.50, 0.05) == 1566
    assert sample_size_per_arm(0.10, 0.02, power=0.9) > sample_size_per_arm(0.10, 0.02)


def test_aa_experiments_reject_at_about_alpha():
    rng = np.random.default_rng(20261203)
    n, p = 2000, 0.1
    a, b = rng.binomial(n, p, EXPERIMENTS), rng.binomial(n, p, EXPERIMENTS)
    rejected = sum(two_proportion_ztest(int(x), n, int(y), n).significant for x, y in zip(a, b))
    rate = rejected / EXPERIMENTS
    print(f"A/A rejection rate at alpha=0.05: {rate:.4f}")
    assert 0.04 <= rate <= 0.06


def test_power_at_the_formula_n_is_about_one_minus_beta():
    rng = np.random.default_rng(7)
    baseline, mde = 0.10, 0.02
    n = sample_size_per_arm(baseline, mde, power=0.8)
    a, b = rng.binomial(n, baseline, EXPERIMENTS), rng.binomial(n, baseline + mde, EXPERIMENTS)
    power = sum(two_proportion_ztest(int(x), n, int(y), n).significant for x, y in zip(a, b)) / EXPERIMENTS
    print(f"simulated power at n={n}: {power:.4f}")
    assert 0.75 <= power <= 0.85


def test_ci_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    n, pa, pb = 1500, 0.2, 0.25
    a, b = rng.binomial(n, pa, EXPERIMENTS), rng.binomial(n, pb, EXPERIMENTS)
    covered = 0
    for x, y in zip(a, b):
        r = two_proportion_ztest(int(x), n, int(y), n)
        covered += r.ci_low <= pb - pa <= r.ci_high
    assert 0.93 <= covered / EXPERIMENTS <= 0.97


def test_degenerate_and_invalid_inputs():
    r = two_proportion_ztest(0, 10, 0, 10)
    assert (r.z, r.p_value, r.ci_low, r.ci_high) == (0.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="trials_a"):
        two_proportion_ztest(0, 0, 1, 10)
    with pytest.raises(ValueError, match="successes_b"):
        two_proportion_ztest(1, 10, 11, 10)
    with pytest.raises(ValueError, match="mde"):
        sample_size_per_arm(0.1, 0.0)
    with pytest.raises(ValueError, match="baseline"):
        sample_size_per_arm(1.0, 0.1)
