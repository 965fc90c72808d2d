"""What the ingress measures of one request: tokens and timing per choice, then the metrics,
and the A/B records built from them (the variant's outcome, a sampled prediction)."""

from __future__ import annotations

from typing import Optional

from fleetserve.canary.ab_records import RequestOutcome, ServedRequest
from fleetserve.canary.prediction_log import PredictionRecord
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import FleetMetrics


class ChoiceTiming:
    """First/last token times and token counts per choice (for TTFT and TPOT)."""

    def __init__(self, n: int, keep_text: bool = False):
        self.first: Optional[float] = None
        self.first_token: Optional[int] = None  # choice 0's first token id (a drift feature)
        self.completion_tokens = 0
        self.texts: Optional[list[list[str]]] = [[] for _ in range(n)] if keep_text else None
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

    def on_output(self, index: int, output, now: float) -> None:
        """One engine output of choice ``index`` (a RequestOutput)."""
        ids = output.token_ids_delta
        if ids:
            if index == 0 and self.first_token is None:
                self.first_token = ids[0]
            self.on_tokens(index, len(ids), now)
        if self.texts is not None and output.text_delta:
            self.texts[index].append(output.text_delta)

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


def request_outcome(job, timing: ChoiceTiming, status: str, wall: float) -> RequestOutcome:
    """What the A/B analysis keeps of a finished ``job`` (an api.service.Job)."""
    labels = job.labels
    served = ServedRequest(job.request_id, labels["tenant"], labels["model"], labels["version"], wall)
    return RequestOutcome(served, error=status.startswith("5"),
                          ttft_s=None if timing.first is None else timing.first - job.arrival,
                          tpots=tuple(timing.tpots()), prompt_lengths=tuple(len(p) for p in job.prompts),
                          output_tokens=timing.completion_tokens, first_token=timing.first_token)


def prediction_record(job, timing: ChoiceTiming, status: str, wall: float) -> Optional[PredictionRecord]:
    """The sampled log line of ``job``; None when stage 3 did not sample it."""
    if not job.log_prediction or timing.texts is None:
        return None
    labels = job.labels
    return PredictionRecord(job.request_id, labels["tenant"], labels["model"], labels["version"], wall, status,
                            [list(p) for p in job.prompts], ["".join(t) for t in timing.texts])
