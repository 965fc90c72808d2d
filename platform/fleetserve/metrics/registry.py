"""Prometheus objects for the specs in :mod:`fleetserve.metrics.names`.

:class:`FleetMetrics` holds the ingress's series (``names.INGRESS``); other components
(tenant metering) build theirs with :func:`build_metric` in the same registry.

Each :class:`FleetMetrics` owns its own ``CollectorRegistry`` (not the process-global
one) so two ingress apps built in one process, as tests do, never collide.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fleetserve.metrics import names as N


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._m = {spec.name: build_metric(spec, self.registry) for spec in N.INGRESS}

    def get(self, spec: N.MetricSpec):
        return self._m[spec.name]

    def observe_request(self, *, tenant: str, model: str, version: str, status: str, prompt_tokens: int,
                        completion_tokens: int) -> None:
        self.get(N.REQUESTS).labels(tenant, model, version, status).inc()
        if prompt_tokens:
            self.get(N.PROMPT_TOKENS).labels(tenant, model, version).inc(prompt_tokens)
        if completion_tokens:
            self.get(N.COMPLETION_TOKENS).labels(tenant, model, version).inc(completion_tokens)

    def observe_latency(self, spec: N.MetricSpec, seconds: float, *, tenant: str, model: str, version: str) -> None:
        self.get(spec).labels(tenant, model, version).observe(seconds)

    def set_replica_stats(self, rows: Iterable[tuple[str, str, str, int, int, float]]) -> None:
        """Replace the per-replica gauges with ``(model, version, replica, waiting, running, kv_usage)`` rows."""
        gauges = [self.get(N.QUEUE_DEPTH), self.get(N.RUNNING), self.get(N.KV_USAGE)]
        for g in gauges:
            g.clear()  # replicas that went away must not linger
        for model, version, replica, waiting, running, kv in rows:
            gauges[0].labels(model, version, replica).set(waiting)
            gauges[1].labels(model, version, replica).set(running)
            gauges[2].labels(model, version, replica).set(kv)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def build_metric(spec: N.MetricSpec, registry: CollectorRegistry):
    """The Prometheus collector for ``spec``, registered in ``registry``."""
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=registry)
    return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
