"""Usage metering per tenant and model: requests, prompt/completion tokens, rejections.

Counters go to two places: Prometheus (this replica's view, ``tenant`` label, for
dashboards and alerts) and the tenant store (Redis hash counters: the fleet-wide total,
read by ``GET /admin/usage``). While the store is unreachable, increments are buffered in
memory and flushed with the next successful write, so usage is not lost to an outage.
"""

from __future__ import annotations

import weakref

import logging
from collections import defaultdict
from typing import Optional

from prometheus_client import REGISTRY, CollectorRegistry

from fleetserve.errors import ServiceUnavailableError
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import build_metric, drop_tenant
from fleetserve.tenants.store import STORE_ERRORS, TenantStore, Usage

log = logging.getLogger(__name__)

# Usage fields (also the keys of the admin usage JSON).
REQUESTS = "requests"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
REJECTED = "rejected"
USAGE_FIELDS = (REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS, REJECTED)


class TenantMetrics:
    """Prometheus series of tenant metering (specs in fleetserve.metrics.names)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = build_metric(N.TENANT_REQUESTS, registry)
        self.prompt_tokens = build_metric(N.TENANT_PROMPT_TOKENS, registry)
        self.completion_tokens = build_metric(N.TENANT_COMPLETION_TOKENS, registry)
        self.rejected = build_metric(N.TENANT_REJECTED, registry)


# Keyed by the registry itself, weakly: an id() key could be reused by a new registry
# once the old one is collected, handing it series registered elsewhere.
_METRICS: "weakref.WeakKeyDictionary[CollectorRegistry, TenantMetrics]" = weakref.WeakKeyDictionary()


def tenant_metrics(registry: CollectorRegistry = REGISTRY) -> TenantMetrics:
    """One set of series per Prometheus registry (registering twice would raise)."""
    m = _METRICS.get(registry)
    if m is None:
        m = _METRICS[registry] = TenantMetrics(registry)
    return m


class Metering:
    """Records usage; reads it back per tenant."""

    def __init__(self, store: TenantStore, registry: CollectorRegistry = REGISTRY) -> None:
        self._store = store
        self._registry = registry
        self._metrics = tenant_metrics(registry)
        self._pending: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))

    @property
    def metrics(self) -> TenantMetrics:
        return self._metrics

    def forget_tenant(self, tenant_id: str) -> None:
        """A deleted tenant: drop its series from this registry (every tenant-labelled one,
        the ingress's included). Its usage stays in the store for billing."""
        drop_tenant(self._registry, tenant_id)

    async def record_completion(self, tenant_id: str, model: str, prompt_tokens: int, completion_tokens: int, outcome: str) -> None:
        m = self._metrics
        m.requests.labels(tenant_id, model, outcome).inc()
        m.prompt_tokens.labels(tenant_id, model).inc(prompt_tokens)
        m.completion_tokens.labels(tenant_id, model).inc(completion_tokens)
        await self._add(tenant_id, model, {REQUESTS: 1, PROMPT_TOKENS: prompt_tokens, COMPLETION_TOKENS: completion_tokens})

    async def record_rejection(self, tenant_id: str, model: str, reason: str) -> None:
        self._metrics.rejected.labels(tenant_id, model, reason).inc()
        await self._add(tenant_id, model, {REJECTED: 1})

    def note_rejection(self, tenant_id: str, model: str, reason: str) -> None:
        """Synchronous variant for sync call sites: written to the store with the next write."""
        self._metrics.rejected.labels(tenant_id, model, reason).inc()
        self._pending[(tenant_id, model)][REJECTED] += 1

    async def _add(self, tenant_id: str, model: str, deltas: dict[str, int]) -> None:
        self._merge((tenant_id, model), deltas)
        # Each series is taken out before its write is awaited, so concurrent callers never
        # write (and count) the same increments twice or delete what another one added
        # meanwhile (found by the Redis fault test: a KeyError turned requests into 500s).
        while self._pending:
            key, d = self._pending.popitem()
            try:
                await self._store.add_usage(key[0], key[1], dict(d))
            except STORE_ERRORS as e:
                self._merge(key, d)
                log.warning("usage store unreachable (%s); buffering %d series", type(e).__name__, len(self._pending))
                return

    def _merge(self, key: tuple[str, str], deltas: dict[str, int]) -> None:
        pending = self._pending[key]
        for k, v in deltas.items():
            pending[k] += v

    async def usage(self, tenant_id: Optional[str] = None) -> Usage:
        """Fleet-wide usage from the store plus this replica's unflushed increments."""
        try:
            usage = await self._store.read_usage(tenant_id)
        except STORE_ERRORS as e:
            raise ServiceUnavailableError("usage store unreachable", retry_after_s=1.0) from e
        for (t, mdl), d in self._pending.items():
            if tenant_id is not None and t != tenant_id:
                continue
            fields = usage.setdefault(t, {}).setdefault(mdl, {})
            for k, v in d.items():
                fields[k] = fields.get(k, 0) + v
        for per_model in usage.values():
            for fields in per_model.values():
                for k in USAGE_FIELDS:
                    fields.setdefault(k, 0)
        return usage
