"""A model replica's engine series, under vLLM's names (``names.ENGINE``).

:class:`EngineMetrics` writes them for an engine that has no exporter of its own (native):
load gauges set from the engine's stats just before each scrape, and per-request latency
and token counts measured by the replica with a :class:`RequestTimer`.

:class:`VllmMirror` is for ``engine: vllm``: vLLM's own ``PrometheusStatLogger`` registers the
same names in prometheus_client's process-global registry; the mirror re-exports its
``vllm:*`` families from the replica's registry with fleetserve's ``version`` and ``replica``
labels added, so the two engines' series read the same way on a dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from fleetserve.metrics import names as N
from fleetserve.metrics.registry import build_metric

VLLM_PREFIX = "vllm:"
FINISHED_REASONS = frozenset({"stop", "length", "abort", "error"})  # vLLM's FinishReason values


@dataclass
class RequestTimer:
    """One request's timing as the replica sees its outputs (engine-side latency)."""

    arrival: float
    first: Optional[float] = None
    last: Optional[float] = None
    tokens: int = 0
    gaps: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the previous output, tokens in it)

    def on_output(self, now: float, new_tokens: int) -> None:
        if new_tokens <= 0:
            return
        if self.first is None:
            self.first = now
        elif self.last is not None:
            self.gaps.append((now - self.last, new_tokens))
        self.last = now
        self.tokens += new_tokens


@dataclass(frozen=True)
class EngineLoad:
    """What the load gauges show; ``preemptions_total`` is the engine's running count."""

    num_waiting: int
    num_running: int
    kv_usage: float
    preemptions_total: int = 0


class EngineMetrics:
    """The ``vllm:*`` series of one replica (labels ``model_name``, ``version``, ``replica``)."""

    def __init__(self, registry: CollectorRegistry, model_name: str, version: str, replica: str) -> None:
        self._labels = (model_name, version, replica)
        self._m = {spec.name: build_metric(spec, registry) for spec in N.ENGINE}
        self._preemptions_seen = 0

    def _series(self, spec: N.MetricSpec, *extra: str):
        return self._m[spec.name].labels(*self._labels, *extra)

    def set_load(self, load: EngineLoad) -> None:
        self._series(N.VLLM_WAITING).set(load.num_waiting)
        self._series(N.VLLM_RUNNING).set(load.num_running)
        self._series(N.VLLM_KV_USAGE).set(load.kv_usage)
        if load.preemptions_total > self._preemptions_seen:  # the engine's count only grows
            self._series(N.VLLM_PREEMPTIONS).inc(load.preemptions_total - self._preemptions_seen)
            self._preemptions_seen = load.preemptions_total

    def observe_finished(self, timer: RequestTimer, now: float, finish_reason: Optional[str], prompt_tokens: int) -> None:
        reason = finish_reason if finish_reason in FINISHED_REASONS else "error"
        self._series(N.VLLM_REQUEST_SUCCESS, reason).inc()
        if prompt_tokens:
            self._series(N.VLLM_PROMPT_TOKENS).inc(prompt_tokens)
        if timer.tokens:
            self._series(N.VLLM_GENERATION_TOKENS).inc(timer.tokens)
        self._series(N.VLLM_E2E).observe(now - timer.arrival)
        if timer.first is None:
            return
        self._series(N.VLLM_TTFT).observe(timer.first - timer.arrival)
        itl = self._series(N.VLLM_ITL)
        for gap, n in timer.gaps:  # a paced output carries n tokens: n intervals of gap/n each
            for _ in range(n):
                itl.observe(gap / n)
        if timer.tokens > 1 and timer.last is not None:
            self._series(N.VLLM_TPOT).observe((timer.last - timer.first) / (timer.tokens - 1))


class VllmMirror:
    """A collector re-exporting ``source``'s ``vllm:*`` families with ``extra`` labels added."""

    def __init__(self, extra: dict[str, str], source: CollectorRegistry = REGISTRY) -> None:
        self._extra, self._source = dict(extra), source

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():
            if not family.name.startswith(VLLM_PREFIX):
                continue
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [Sample(s.name, {**s.labels, **self._extra}, s.value, s.timestamp, s.exemplar)
                           for s in family.samples]
            yield out

    def describe(self) -> Iterable[Metric]:
        return []  # families appear once vLLM registers them; nothing to check at registration
