"""A/B statistics for feedback rates: the two-proportion z-test, its confidence interval, and
the sample size each arm needs.

- The test statistic uses the *pooled* rate (under H0 both arms share one rate); the
  confidence interval for the difference uses the *unpooled* standard error (no H0 there).
  This is the textbook pairing (OpenIntro Statistics, section 6.2).
- Sample size per arm: ``n = 2 (z_{1-alpha/2} + z_{1-beta})^2 p (1 - p) / MDE^2``, with ``p``
  the rate midway between the arms (baseline + MDE / 2), so that ``p (1 - p)`` is the
  average of the two arms' variances to first order. For alpha = 0.05 and power 0.8 the
  constant ``2 (1.96 + 0.84)^2`` is about 16: Kohavi et al.'s rule of thumb
  ``n = 16 sigma^2 / delta^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.special import ndtr, ndtri


@dataclass(frozen=True)
class ZTestResult:
    """Arm A is the control (stable), arm B the treatment (canary); ``diff = rate_b - rate_a``."""

    successes_a: int
    trials_a: int
    successes_b: int
    trials_b: int
    diff: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    alpha: float

    @property
    def rate_a(self) -> float:
        return self.successes_a / self.trials_a

    @property
    def rate_b(self) -> float:
        return self.successes_b / self.trials_b

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def z_quantile(q: float) -> float:
    """The standard normal's ``q`` quantile (``z_quantile(0.975) = 1.95996...``)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    return float(ndtri(q))


def two_proportion_ztest(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, *, alpha: float = 0.05
) -> ZTestResult:
    """Two-sided test of H0: rate_a == rate_b, with a ``1 - alpha`` CI for ``rate_b - rate_a``.

    A degenerate sample (both arms all successes or all failures) has no variance: z = 0,
    p = 1 and a zero-width interval, rather than a division by zero.
    """
    _check_counts("a", successes_a, trials_a)
    _check_counts("b", successes_b, trials_b)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    pa, pb = successes_a / trials_a, successes_b / trials_b
    diff = pb - pa
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
    z = diff / se_pooled if se_pooled > 0 else 0.0
    p_value = 2 * float(ndtr(-abs(z)))
    se = math.sqrt(pa * (1 - pa) / trials_a + pb * (1 - pb) / trials_b)
    half = z_quantile(1 - alpha / 2) * se
    return ZTestResult(successes_a, trials_a, successes_b, trials_b, diff, z, p_value, diff - half, diff + half, alpha)


def sample_size_per_arm(baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per arm to detect an absolute change ``mde`` from ``baseline`` (two-sided test)."""
    if not 0 < baseline < 1:
        raise ValueError(f"baseline must be in (0, 1), got {baseline}")
    if mde == 0 or not 0 < baseline + mde < 1:
        raise ValueError(f"mde must be non-zero with baseline + mde in (0, 1), got {mde}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")
    p = baseline + mde / 2
    z_sum = z_quantile(1 - alpha / 2) + z_quantile(power)
    return math.ceil(2 * z_sum ** 2 * p * (1 - p) / mde ** 2)


def _check_counts(arm: str, successes: int, trials: int) -> None:
    if trials <= 0:
        raise ValueError(f"trials_{arm} must be > 0, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes_{arm} must be in [0, trials_{arm}], got {successes} of {trials}")
