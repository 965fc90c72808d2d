"""The A/B report of one model: per variant traffic, errors, latency percentiles and feedback,
then each treatment against the control: the two-proportion z-test on the positive-feedback
rate with its confidence interval, and the sample size the experiment needs.

Pure: counters in (:class:`VariantTotals`), a report out. Latency percentiles come from the
variant's latency sketches: the upper edge of the bucket holding the rank, at most 4 % above
the exact percentile (finer than the dashboard's ``histogram_quantile`` over Prometheus buckets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Optional

from fleetserve.canary.ab_records import VariantTotals
from fleetserve.canary.window import LatencySketch
from fleetserve.canary.stats import sample_size_per_arm, two_proportion_ztest
from fleetserve.errors import InvalidRequestError

QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class VariantReport:
    version: str
    requests: int
    errors: int
    error_rate: float
    ttft_s: dict[str, Optional[float]]
    tpot_s: dict[str, Optional[float]]
    feedback: int
    feedback_rate: float  # feedback received per request served
    positive: int
    positive_rate: Optional[float]  # positive share of binary feedback
    numeric_feedback: int
    numeric_mean: Optional[float]
    first_seen: Optional[float]


@dataclass(frozen=True)
class Comparison:
    """Treatment against control on the positive-feedback rate, and how long to keep going."""

    control: str
    treatment: str
    diff: Optional[float]
    z: Optional[float]
    p_value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    significant: bool
    baseline_rate: float
    required_per_arm: int
    have_per_arm: int
    remaining_per_arm: int
    eta_s: Optional[float]  # at the slower arm's feedback rate so far; None: no rate yet


@dataclass(frozen=True)
class ABReport:
    model: str
    control: str
    alpha: float
    power: float
    mde: float
    variants: list[VariantReport]
    comparisons: list[Comparison]

    def to_dict(self) -> dict:
        return asdict(self)


def variant_report(version: str, t: VariantTotals) -> VariantReport:
    def pct(sketch: LatencySketch) -> dict[str, Optional[float]]:
        return {f"p{round(q * 100)}": sketch.quantile(q) for q in QUANTILES}

    feedback = t.feedback_binary + t.feedback_numeric
    return VariantReport(
        version, t.requests, t.errors, t.errors / t.requests if t.requests else 0.0,
        pct(t.ttft), pct(t.tpot),
        feedback, feedback / t.requests if t.requests else 0.0, t.feedback_positive,
        t.feedback_positive / t.feedback_binary if t.feedback_binary else None,
        t.feedback_numeric, t.numeric_sum / t.feedback_numeric if t.feedback_numeric else None, t.first_seen)


def compare(control: VariantTotals, treatment: VariantTotals, names: tuple[str, str], *, alpha: float, power: float,
            mde: float, default_baseline: float, now: float) -> Comparison:
    """One treatment against the control (``names``: their version ids)."""
    ca, cb = control, treatment
    test = None
    if ca.feedback_binary > 0 and cb.feedback_binary > 0:
        test = two_proportion_ztest(ca.feedback_positive, ca.feedback_binary, cb.feedback_positive, cb.feedback_binary,
                                    alpha=alpha)
    baseline = ca.feedback_positive / ca.feedback_binary if ca.feedback_binary else default_baseline
    if not 0 < baseline < 1 or not 0 < baseline + mde < 1:
        baseline = default_baseline  # a rate of 0 or 1 so far says nothing about the variance yet
    if not 0 < baseline + mde < 1:
        raise InvalidRequestError(f"mde {mde} is too large for a baseline rate of {baseline:.4f} "
                                  "(baseline + mde must stay below 1)", field="mde")
    required = sample_size_per_arm(baseline, mde, alpha=alpha, power=power)
    have = min(ca.feedback_binary, cb.feedback_binary)
    remaining = max(0, required - have)
    return Comparison(
        names[0], names[1], test.diff if test else None, test.z if test else None, test.p_value if test else None,
        test.ci_low if test else None, test.ci_high if test else None, bool(test and test.significant), baseline,
        required, have, remaining, _eta(remaining, (ca, cb), now))


def _eta(remaining: int, arms: tuple[VariantTotals, ...], now: float) -> Optional[float]:
    if remaining == 0:
        return 0.0
    rates = []
    for t in arms:
        if t.first_seen is None or now <= t.first_seen or t.feedback_binary == 0:
            return None
        rates.append(t.feedback_binary / (now - t.first_seen))
    return remaining / min(rates) if min(rates) > 0 else None


def build_report(model: str, control: str, totals: Mapping[str, VariantTotals], *, alpha: float, power: float,
                 mde: float, default_baseline: float, now: float) -> ABReport:
    """Every variant with counters (control first), and each other variant against ``control``."""
    order = [control] + sorted(v for v in totals if v != control)
    variants = [variant_report(v, totals.get(v, VariantTotals())) for v in order]
    base = totals.get(control, VariantTotals())
    comparisons = [compare(base, totals[v], (control, v), alpha=alpha, power=power, mde=mde,
                           default_baseline=default_baseline, now=now) for v in order[1:]]
    return ABReport(model, control, alpha, power, mde, variants, comparisons)
