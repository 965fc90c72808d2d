"""Rollout step windows and the latency sketch both the A/B report and the guardrails read.

A *window id* names one rollout step window: ``<canary>/<phase>/<step>/<phase_since>``. The
executor saves each variant's A/B totals when a window begins
(:meth:`fleetserve.canary.rollout_store.RolloutStore.save_window_start`); the window's
traffic is the totals now minus those (:func:`fleetserve.canary.ab_window.arm_window`).

Latencies are counted in a :class:`LatencySketch`: log-spaced buckets 4 % wide, so a p95 is
within 4 % of the exact one whatever the range, and sketches add and subtract by bucket (every
ingress replica adds to the same Redis hash; a window is a difference of two reads).
Prometheus's histogram buckets are too coarse for a 20 % guardrail margin (0.1 -> 0.15 -> 0.25 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from fleetserve.canary.state import Phase, RolloutState

GROWTH = 1.04  # bucket i holds values in (GROWTH**(i-1), GROWTH**i] * MIN_S
MIN_S = 1e-4  # 0.1 ms; smaller values share bucket 0
SERVING = frozenset({Phase.CANARY, Phase.PAUSED})


def window_id(state: RolloutState) -> Optional[str]:
    """The id of the window a live rollout is collecting, or None when the canary serves no
    traffic (bring-up, finished): then nothing is recorded."""
    if state.phase not in SERVING or state.serving_phase is not Phase.CANARY:
        return None
    return f"{state.canary_version}/{state.phase.value}/{state.step_index}/{state.phase_since:.3f}"


def bucket_of(seconds: float) -> int:
    """The sketch bucket of one latency (its upper edge is ``MIN_S * GROWTH ** i``)."""
    return 0 if seconds <= MIN_S else math.ceil(math.log(seconds / MIN_S, GROWTH))


@dataclass
class LatencySketch:
    """Counts per log-spaced bucket (sparse). ``quantile`` answers with the bucket's upper edge."""

    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def add(self, seconds: float) -> None:
        i = bucket_of(seconds)
        self.buckets[i] = self.buckets.get(i, 0) + 1

    def merge(self, other: "LatencySketch") -> None:
        for i, c in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + c

    def minus(self, start: "LatencySketch") -> "LatencySketch":
        """The samples added since ``start`` was read (a bucket never goes below 0)."""
        out = {i: c - start.buckets.get(i, 0) for i, c in self.buckets.items()}
        return LatencySketch({i: c for i, c in out.items() if c > 0})

    def quantile(self, q: float) -> Optional[float]:
        n = self.count
        if n == 0:
            return None
        rank = math.ceil(q * n)
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                return MIN_S * GROWTH ** i
        return None  # unreachable: seen ends at n >= rank

    def to_dict(self) -> dict[str, int]:
        return {str(i): c for i, c in sorted(self.buckets.items())}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencySketch":
        return cls({int(i): int(c) for i, c in d.items()})
