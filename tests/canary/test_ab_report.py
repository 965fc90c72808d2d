"""The A/B report: sketch percentiles, the z-test and sample size through the report, the ETA."""

from __future__ import annotations

import pytest

from fleetserve.canary.ab_records import RequestOutcome, ServedRequest, VariantTotals, feedback_increments
from fleetserve.canary.ab_report import build_report
from fleetserve.canary.window import GROWTH, LatencySketch, bucket_of
from fleetserve.canary.stats import sample_size_per_arm, two_proportion_ztest
from fleetserve.errors import InvalidRequestError


def totals(positive: int, binary: int, requests: int = 0, first_seen: float = 0.0, **fields) -> VariantTotals:
    return VariantTotals(requests=requests or binary, feedback_binary=binary, feedback_positive=positive,
                         first_seen=first_seen, **fields)


def report(control: VariantTotals, canary: VariantTotals, now: float = 1000.0, **kw):
    args = dict(alpha=0.05, power=0.8, mde=0.02, default_baseline=0.5, now=now)
    args.update(kw)
    return build_report("m", "v1", {"v1": control, "v2": canary}, **args)


def test_report_percentiles_are_within_one_sketch_bucket_of_the_exact_ones():
    ttfts = [0.01 * (i + 1) for i in range(100)]  # 0.01 .. 1.0 s: p50 = 0.5, p95 = 0.95, p99 = 0.99
    t = VariantTotals(requests=100, ttft=LatencySketch())
    for x in ttfts:
        t.ttft.add(x)
    ttft = report(t, VariantTotals()).variants[0].ttft_s
    for name, exact in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert exact <= ttft[name] <= exact * GROWTH * 1.0001
    assert report(VariantTotals(), VariantTotals()).variants[0].tpot_s == {"p50": None, "p95": None, "p99": None}


def test_outcome_increments_land_in_the_right_buckets():
    served = ServedRequest("r", "acme", "m", "v1", 0.0)
    ok = VariantTotals.decode(RequestOutcome(served, error=False, ttft_s=0.03, tpots=(0.0005, 0.0005, 7.0)).increments())
    assert (ok.requests, ok.errors) == (1, 0)
    assert ok.ttft.buckets == {bucket_of(0.03): 1} and ok.tpot.buckets == {bucket_of(0.0005): 2, bucket_of(7.0): 1}
    assert ok.ttft.quantile(0.5) == pytest.approx(0.03, rel=GROWTH - 1)
    failed = VariantTotals.decode(RequestOutcome(served, error=True, ttft_s=0.03, tpots=(0.01,)).increments())
    assert (failed.requests, failed.errors, failed.ttft.count, failed.tpot.count) == (1, 1, 0, 0)  # a fast error is no speed-up


def test_the_report_reproduces_the_openintro_cpr_example():
    # OpenIntro Statistics 6.2 (also tests/canary/test_stats.py): control 11/50, treatment 14/40,
    # 95% CI for the difference (-0.056, 0.316) as printed (SE rounded).
    r = report(totals(11, 50), totals(14, 40))
    c = r.comparisons[0]
    assert (c.control, c.treatment) == ("v1", "v2")
    assert c.diff == pytest.approx(0.13)
    assert (c.ci_low, c.ci_high) == pytest.approx((-0.056, 0.316), abs=0.002)
    direct = two_proportion_ztest(11, 50, 14, 40)
    assert (c.z, c.p_value) == pytest.approx((direct.z, direct.p_value)) and not c.significant
    assert [v.positive_rate for v in r.variants] == pytest.approx([0.22, 0.35])


def test_sample_size_and_eta_from_the_slower_arm():
    # Control: 100 of 1000 positive (baseline 10 %), 1000 feedback in 1000 s; canary half as fast.
    control = totals(100, 1000, first_seen=0.0)
    canary = totals(60, 500, first_seen=0.0)
    c = report(control, canary, now=1000.0).comparisons[0]
    assert c.baseline_rate == pytest.approx(0.10)
    assert c.required_per_arm == sample_size_per_arm(0.10, 0.02) == 3843
    assert (c.have_per_arm, c.remaining_per_arm) == (500, 3343)
    assert c.eta_s == pytest.approx(3343 / 0.5)  # the canary gets 0.5 feedback/s


def test_no_feedback_yet_uses_the_configured_baseline_and_has_no_eta():
    c = report(VariantTotals(requests=5), VariantTotals(requests=5)).comparisons[0]
    assert c.z is None and c.baseline_rate == 0.5 and c.eta_s is None
    assert c.required_per_arm == sample_size_per_arm(0.5, 0.02)


def test_a_large_enough_sample_is_done_and_significant():
    c = report(totals(1000, 10000), totals(1300, 10000)).comparisons[0]
    assert c.significant and c.remaining_per_arm == 0 and c.eta_s == 0.0


def test_an_mde_beyond_the_rate_range_is_a_400_naming_mde():
    with pytest.raises(InvalidRequestError) as e:
        report(totals(90, 100), totals(90, 100), mde=0.6)
    assert e.value.field == "mde"


def test_feedback_increments_split_binary_and_numeric():
    t = VariantTotals.decode({**feedback_increments(True)})
    assert (t.feedback_binary, t.feedback_positive, t.feedback_numeric) == (1, 1, 0)
    t = VariantTotals.decode(feedback_increments(0.25))
    assert (t.feedback_binary, t.feedback_numeric, t.numeric_sum) == (0, 1, 0.25)


def test_arm_window_is_the_difference_of_two_reads_and_feeds_the_guardrails():
    from fleetserve.canary.ab_window import arm_window
    from fleetserve.canary.guardrails import evaluate
    from tests.canary.factories import make_config

    def served_totals(requests: int, errors: int, ttft_s: float) -> VariantTotals:
        return VariantTotals.decode({"requests": requests, "errors": errors, f"ttft:{bucket_of(ttft_s)}": requests})

    start = served_totals(1000, 0, 0.04)
    assert VariantTotals.decode(start.to_fields()) == start  # persists through the rollout store
    stable = arm_window(start, served_totals(1200, 2, 0.04))
    canary = arm_window(None, served_totals(200, 20, 0.2))
    assert (stable.requests, stable.errors, canary.requests, canary.errors) == (200, 2, 200, 20)
    assert stable.ttft_p95_s == pytest.approx(0.04, rel=GROWTH - 1) and canary.ttft_p95_s > 0.15
    verdict = evaluate(stable, canary, make_config())
    assert {c.name for c in verdict.checks if c.breached} == {"error_rate", "ttft_p95_s"}


def test_a_latency_within_the_margin_is_no_breach():
    # Prometheus buckets (0.1 -> 0.15) would put 0.115 s at ~0.148 s, over a 20 % margin on 0.1 s.
    from fleetserve.canary.ab_window import arm_window
    from fleetserve.canary.guardrails import evaluate
    from tests.canary.factories import make_config

    def served(ttft_s: float) -> VariantTotals:
        return VariantTotals.decode({"requests": 500, f"ttft:{bucket_of(ttft_s)}": 500})

    config = make_config(guardrails={"error_rate_margin": 0.01, "ttft_p95_margin": 0.2, "tpot_p95_margin": 0.2})
    ok = evaluate(arm_window(None, served(0.1)), arm_window(None, served(0.115)), config)
    slow = evaluate(arm_window(None, served(0.1)), arm_window(None, served(0.13)), config)
    assert ok.passed and not slow.passed
