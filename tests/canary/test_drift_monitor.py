"""Online drift per version against the baseline window (canary/drift_monitor.py)."""

from __future__ import annotations

import numpy as np

from fleetserve.canary.ab_config import DriftMonitorConfig
from fleetserve.canary.drift import FIRST_TOKEN, OUTPUT_LENGTH, PROMPT_LENGTH
from fleetserve.canary.drift_monitor import DriftMonitor, DriftSample
from fleetserve.canary.guardrails import evaluate
from fleetserve.canary.snapshot import ArmWindow
from tests.canary.factories import make_config


def samples(rng, n: int, prompt_mean: float, out_mean: float, tokens) -> list[DriftSample]:
    return [DriftSample(int(rng.poisson(prompt_mean)) + 1, int(rng.poisson(out_mean)), int(rng.choice(tokens)))
            for _ in range(n)]


def make_monitor(**overrides):
    gauges = {}
    cfg = DriftMonitorConfig(**{"baseline_size": 300, "window_size": 400, "min_samples": 100, "refresh_every": 50,
                                **overrides})
    return DriftMonitor(cfg, sink=lambda m, v, f, x: gauges.__setitem__((m, v, f), x)), gauges


def test_same_distribution_stays_below_0_1_and_a_shift_exceeds_0_2():
    rng = np.random.default_rng(3)
    mon, gauges = make_monitor()
    for s in samples(rng, 300, 40, 20, [5, 6, 7, 8]):  # the baseline: stable's first 300
        mon.observe("m", "v1", "v1", s)
    assert mon.has_baseline("m")
    for s in samples(rng, 400, 40, 20, [5, 6, 7, 8]):
        mon.observe("m", "v1", "v1", s)
    for s in samples(rng, 400, 80, 5, [9, 10]):  # the canary: longer prompts, short outputs, other tokens
        mon.observe("m", "v2", "v1", s)
    stable, canary = mon.version_drift("m", "v1"), mon.version_drift("m", "v2")
    assert max(stable.psi.values()) < 0.1, stable
    assert min(canary.psi.values()) > 0.2, canary
    assert gauges[("m", "v2", PROMPT_LENGTH)] > 0.2 and gauges[("m", "v1", OUTPUT_LENGTH)] < 0.1
    assert {f for (_, v, f) in gauges if v == "v2"} == {PROMPT_LENGTH, OUTPUT_LENGTH, FIRST_TOKEN}


def test_no_psi_before_the_baseline_or_the_minimum_sample():
    rng = np.random.default_rng(4)
    mon, gauges = make_monitor()
    for s in samples(rng, 150, 40, 20, [5]):
        mon.observe("m", "v2", "v1", s)  # a canary alone never forms the baseline
    assert not mon.has_baseline("m") and mon.version_drift("m", "v2").psi == {} and gauges == {}
    for s in samples(rng, 300, 40, 20, [5]):
        mon.observe("m", "v1", "v1", s)
    assert mon.version_drift("m", "v2").psi  # now it has both
    mon.reset_baseline("m")
    assert not mon.has_baseline("m") and mon.arm_histograms("m", "v2") == {}


def test_arm_histograms_feed_the_rollout_drift_guardrail():
    rng = np.random.default_rng(5)
    mon, _ = make_monitor()
    for s in samples(rng, 700, 40, 20, [5, 6, 7]):
        mon.observe("m", "v1", "v1", s)
    for s in samples(rng, 400, 90, 20, [5, 6, 7]):
        mon.observe("m", "v2", "v1", s)
    stable = ArmWindow(requests=400, histograms=mon.arm_histograms("m", "v1"))
    canary = ArmWindow(requests=400, histograms=mon.arm_histograms("m", "v2"))
    verdict = evaluate(stable, canary, make_config(drift={"enabled": True}))
    breached = {c.name for c in verdict.checks if c.breached}
    assert "psi_prompt_length" in breached and "psi_first_token" not in breached


def test_disabled_monitor_keeps_nothing():
    mon, gauges = make_monitor(enabled=False)
    for _ in range(400):
        mon.observe("m", "v1", "v1", DriftSample(1, 1, 1))
    assert not mon.has_baseline("m") and mon.report("m") == []


def test_a_constant_baseline_still_separates_longer_outputs():
    mon, _ = make_monitor(baseline_size=100, min_samples=100)
    for _ in range(100):
        mon.observe("m", "v1", "v1", DriftSample(10, 6, 5))
    for _ in range(100):
        mon.observe("m", "v2", "v1", DriftSample(10, 10, 5))
    d = mon.version_drift("m", "v2").psi
    assert d[OUTPUT_LENGTH] > 0.2 and d[PROMPT_LENGTH] < 0.01
