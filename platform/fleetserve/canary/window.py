"""One arm's outcomes over a rollout step window, in a form several ingress replicas can add up.

The request path (stage 7, ``account``) records each finished request of a model under a live
rollout: its version, whether it failed (5xx, engine error), its time to first token and its
time per output token. Latencies go into a :class:`LatencySketch`: log-spaced buckets 4 %
wide, so a p95 is within 4 % of the exact one whatever the range, and two sketches merge by
adding counts (each ingress replica flushes its own; the executor sums them). Prometheus's
histogram buckets are too coarse for a 20 % margin (0.1 -> 0.15 -> 0.25 s).

A *window id* names one rollout step window: ``<canary>/<phase>/<step>/<phase_since>``.
Samples are counted only under the window id the recorder's cached rollout state names, so
a step's verdict sees only that step's traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from fleetserve.canary.snapshot import ArmWindow
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


@dataclass
class LatencySketch:
    """Counts per log-spaced bucket (sparse). ``quantile`` answers with the bucket's upper edge."""

    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= MIN_S else math.ceil(math.log(seconds / MIN_S, GROWTH))
        self.buckets[i] = self.buckets.get(i, 0) + 1

    def merge(self, other: "LatencySketch") -> None:
        for i, c in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + c

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


@dataclass
class ArmCounts:
    """One version's requests, errors and latency sketches in one window (mergeable)."""

    requests: int = 0
    errors: int = 0
    ttft: LatencySketch = field(default_factory=LatencySketch)
    tpot: LatencySketch = field(default_factory=LatencySketch)

    def record(self, failed: bool, ttft_s: Optional[float], tpots_s: Iterable[float]) -> None:
        self.requests += 1
        self.errors += int(failed)
        if ttft_s is not None:
            self.ttft.add(ttft_s)
        for t in tpots_s:
            self.tpot.add(t)

    def merge(self, other: "ArmCounts") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.ttft.merge(other.ttft)
        self.tpot.merge(other.tpot)

    def window(self) -> ArmWindow:
        """What the policy reads: counts and p95s."""
        return ArmWindow(self.requests, self.errors, self.ttft.quantile(0.95), self.tpot.quantile(0.95))

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "ttft": self.ttft.to_dict(),
                "tpot": self.tpot.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArmCounts":
        return cls(int(d["requests"]), int(d["errors"]), LatencySketch.from_dict(d.get("ttft", {})),
                   LatencySketch.from_dict(d.get("tpot", {})))
