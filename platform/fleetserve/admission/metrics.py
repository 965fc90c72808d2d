"""Prometheus series of the fleet admission queue, per model and priority class.

:class:`QueueObserver` is the :class:`fleetserve.admission.scheduler.SchedulerObserver` the
ingress hands each model's executor. Names and labels are declared in
:mod:`fleetserve.metrics.names` with every other series.
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry

from fleetserve.metrics import names as N
from fleetserve.metrics.registry import build_metric


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_wait = build_metric(N.FLEET_QUEUE_WAIT, registry)
        self.shed = build_metric(N.FLEET_SHED, registry)
        self.preemptions = build_metric(N.FLEET_PREEMPTIONS, registry)

    def observer(self, model: str) -> "QueueObserver":
        return QueueObserver(self, model)


class QueueObserver:
    """Writes the fleet series of one model ("*" when one pool serves every model)."""

    def __init__(self, m: AdmissionMetrics, model: str) -> None:
        self._m, self._model = m, model

    def dispatched(self, priority_class: int, waited_s: float) -> None:
        self._m.queue_wait.labels(self._model, str(priority_class)).observe(waited_s)

    def shed(self, priority_class: int, status: int) -> None:
        self._m.shed.labels(self._model, str(priority_class), str(status)).inc()

    def preempted(self, priority_class: int) -> None:
        self._m.preemptions.labels(self._model, str(priority_class)).inc()


# Keyed by the registry itself, weakly: an id() key could be reused by a new registry
# once the old one is collected, handing it series registered elsewhere.
_METRICS: "weakref.WeakKeyDictionary[CollectorRegistry, AdmissionMetrics]" = weakref.WeakKeyDictionary()


def admission_metrics(registry: CollectorRegistry) -> AdmissionMetrics:
    """One set of series per Prometheus registry (registering twice would raise)."""
    m = _METRICS.get(registry)
    if m is None:
        m = _METRICS[registry] = AdmissionMetrics(registry)
    return m
