"""Prometheus objects for the specs in :mod:`fleetserve.metrics.names`.

:class:`FleetMetrics` holds the ingress's series (``names.INGRESS``); other components
(tenant metering) build theirs with :func:`build_metric` in the same registry.

Each :class:`FleetMetrics` owns its own ``CollectorRegistry`` (not the process-global
one) so two ingress apps built in one process, as tests do, never collide.

:func:`drop_tenant` removes a deleted tenant's series from every collector built here in
one registry, so a removed tenant does not linger on the metrics port.
"""

from __future__ import annotations

import weakref
from typing import Iterable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fleetserve.metrics import names as N


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.address: Optional[str] = None  # "host:port" of the listener serving this registry, once started
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

    def set_warm_replicas(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """Replace the warm-pool gauge with ``(model, version, warm replicas)`` rows."""
        gauge = self.get(N.WARM_REPLICAS)
        gauge.clear()  # versions that went away must not linger
        for model, version, warm in rows:
            gauge.labels(model, version).set(warm)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# Collectors with a tenant label, per registry (weakly keyed: registries of finished tests go).
_TENANT_COLLECTORS: "weakref.WeakKeyDictionary[CollectorRegistry, list]" = weakref.WeakKeyDictionary()


def build_metric(spec: N.MetricSpec, registry: CollectorRegistry):
    """The Prometheus collector for ``spec``, registered in ``registry``."""
    if spec.kind == "counter":
        metric = Counter(spec.name, spec.help, spec.labels, registry=registry)
    elif spec.kind == "gauge":
        metric = Gauge(spec.name, spec.help, spec.labels, registry=registry)
    else:
        metric = Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
    if N.TENANT in spec.labels:
        _TENANT_COLLECTORS.setdefault(registry, []).append(metric)
    return metric


def drop_tenant(registry: CollectorRegistry, tenant_id: str) -> None:
    """Remove every series of ``tenant_id`` from the collectors built in ``registry``."""
    for metric in _TENANT_COLLECTORS.get(registry, ()):
        metric.remove_by_labels({N.TENANT: tenant_id})
