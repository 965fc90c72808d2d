"""Rollout guardrail input from the A/B counters: one arm's :class:`ArmWindow` over a step.

The A/B store's per-variant counters are cumulative and shared by every ingress replica
(Redis), so a step's window is the difference between two reads: the totals saved when the
step began (``RolloutStore.save_window_start``) and the totals now. The rollout executor's
use, per tick (``RolloutExecutor.arms``)::

    totals = await recorder.variant_totals(model)            # version -> VariantTotals
    canary = arm_window(at_step_start.get(canary_v), totals.get(canary_v, VariantTotals()),
                        recorder.drift_histograms(model, canary_v))
"""

from __future__ import annotations

from typing import Mapping, Optional

from fleetserve.canary.ab_records import VariantTotals
from fleetserve.canary.snapshot import ArmWindow


def arm_window(start: Optional[VariantTotals], now: VariantTotals,
               histograms: Optional[Mapping[str, tuple[int, ...]]] = None) -> ArmWindow:
    """The traffic between ``start`` (None: since the counters began) and ``now``; p95s from
    the sketch differences (None while the window has no latency sample). Counters below
    ``start`` (a Redis that lost its data) count from zero again rather than from ``start``."""
    s = start if start is not None and start.requests <= now.requests else VariantTotals()
    requests = now.requests - s.requests
    errors = min(requests, max(0, now.errors - s.errors))
    return ArmWindow(requests, errors, now.ttft.minus(s.ttft).quantile(0.95), now.tpot.minus(s.tpot).quantile(0.95),
                     dict(histograms or {}))
