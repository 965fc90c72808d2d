"""Canary-vs-stable guardrails over one step window: error rate, p95 TTFT, p95 TPOT, and
optionally PSI drift of the prompt/output distributions. Pure; the policy calls it once it
has the minimum sample on both sides."""

from __future__ import annotations

from fleetserve.canary.config import CanaryConfig
from fleetserve.canary.decision import GuardrailCheck, Verdict
from fleetserve.canary.drift import psi
from fleetserve.canary.snapshot import ArmWindow


def evaluate(stable: ArmWindow, canary: ArmWindow, config: CanaryConfig, reference: str = "window") -> Verdict:
    """Every applicable check; a latency check is skipped when either arm has no p95 yet,
    a drift feature when either arm has no histogram for it."""
    g = config.guardrails
    checks = [GuardrailCheck("error_rate", canary.error_rate, stable.error_rate, stable.error_rate + g.error_rate_margin)]
    for name, c, s, margin in (
        ("ttft_p95_s", canary.ttft_p95_s, stable.ttft_p95_s, g.ttft_p95_margin),
        ("tpot_p95_s", canary.tpot_p95_s, stable.tpot_p95_s, g.tpot_p95_margin),
    ):
        if c is not None and s is not None:
            checks.append(GuardrailCheck(name, c, s, s * (1 + margin)))
    if config.drift.enabled:
        checks += _drift_checks(stable, canary, config)
    return Verdict(tuple(checks), canary.requests, stable.requests, reference)


def _drift_checks(stable: ArmWindow, canary: ArmWindow, config: CanaryConfig) -> list[GuardrailCheck]:
    out = []
    for feature in config.drift.features:
        s, c = stable.histograms.get(feature), canary.histograms.get(feature)
        if not s or not c or len(s) != len(c) or sum(s) == 0 or sum(c) == 0:
            continue
        # The check's "stable" value is PSI's ideal, 0: stable against itself.
        out.append(GuardrailCheck(f"psi_{feature}", psi(s, c), 0.0, config.drift.psi_threshold))
    return out
