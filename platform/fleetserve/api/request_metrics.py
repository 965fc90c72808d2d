"""What the ingress measures of one request: tokens and timing per choice, then the metrics."""

from __future__ import annotations

from typing import Optional

from fleetserve.metrics import names as N
from fleetserve.metrics.registry import FleetMetrics


class ChoiceTiming:
    """First/last token times and token counts per choice (for TTFT and TPOT)."""

    def __init__(self, n: int):
        self.first: Optional[float] = None
        self.completion_tokens = 0
        self._first: list[Optional[float]] = [None] * n
        self._last: list[Optional[float]] = [None] * n
        self._count = [0] * n

    def on_tokens(self, index: int, n_new: int, now: float) -> None:
        self.completion_tokens += n_new
        if self._first[index] is None:
            self._first[index] = now
            if self.first is None:
                self.first = now
        self._last[index] = now
        self._count[index] += n_new

    def tpots(self) -> list[float]:
        out = []
        for f, l, c in zip(self._first, self._last, self._count):
            if f is not None and c > 1:
                out.append((l - f) / (c - 1))
        return out


def observe_request(metrics: FleetMetrics, labels: dict, arrival: float, now: float, timing: ChoiceTiming,
                    status: str, prompt_tokens: int) -> None:
    """Count one finished request and its latencies (``labels``: tenant, model, version)."""
    metrics.observe_request(status=status, prompt_tokens=prompt_tokens, completion_tokens=timing.completion_tokens,
                            **labels)
    if timing.first is not None:
        metrics.observe_latency(N.TTFT, timing.first - arrival, **labels)
        metrics.observe_latency(N.E2E, now - arrival, **labels)
    for tpot in timing.tpots():
        metrics.observe_latency(N.TPOT, tpot, **labels)
