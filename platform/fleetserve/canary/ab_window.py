"""Rollout guardrail input from the A/B counters: one arm's :class:`ArmWindow` over a step.

The A/B store's per-variant counters are cumulative and shared by every ingress replica
(Redis), so a step's window is the difference between two reads: the totals saved when the
step began and the totals now. The rollout executor's use, per tick::

    totals = await recorder.variant_totals(model)            # version -> VariantTotals
    stable = arm_window(at_step_start[stable_v], totals[stable_v], recorder.drift_histograms(model, stable_v))
    canary = arm_window(at_step_start[canary_v], totals[canary_v], recorder.drift_histograms(model, canary_v))

``VariantTotals.to_fields()`` / ``VariantTotals.decode()`` persist the step's starting totals
in the rollout state.
"""

from __future__ import annotations

from typing import Mapping, Optional

from fleetserve.canary.ab_records import TPOT_BUCKETS, TTFT_BUCKETS, VariantTotals
from fleetserve.canary.ab_report import bucket_quantile
from fleetserve.canary.snapshot import ArmWindow


def arm_window(start: Optional[VariantTotals], now: VariantTotals,
               histograms: Optional[Mapping[str, tuple[int, ...]]] = None) -> ArmWindow:
    """The traffic between ``start`` (None: since the counters began) and ``now``; p95s from
    the bucket differences (None while the window has no latency sample)."""
    s = start or VariantTotals()
    requests = max(0, now.requests - s.requests)
    errors = min(requests, max(0, now.errors - s.errors))
    ttft = tuple(max(0, a - b) for a, b in zip(now.ttft_buckets, s.ttft_buckets))
    tpot = tuple(max(0, a - b) for a, b in zip(now.tpot_buckets, s.tpot_buckets))
    return ArmWindow(requests, errors, bucket_quantile(0.95, TTFT_BUCKETS, ttft),
                     bucket_quantile(0.95, TPOT_BUCKETS, tpot), dict(histograms or {}))
