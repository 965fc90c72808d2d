"""The rollout executor's Prometheus series (specs in :mod:`fleetserve.metrics.names`).

Built in the ingress's registry, so one ``/metrics`` shows them. Only the replica holding
the executor lease exports values; the others export the families empty.
"""

from __future__ import annotations

from typing import Optional

from prometheus_client import CollectorRegistry

from fleetserve.canary.decision import RolloutDecision
from fleetserve.canary.state import Phase, RolloutState
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import build_metric


class RolloutMetrics:
    """Decisions as a counter per event; weight, step and the last verdict as gauges."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self._m = {spec.name: build_metric(spec, registry) for spec in N.ROLLOUT}

    def get(self, spec: N.MetricSpec):
        return self._m[spec.name]

    def observe(self, decision: RolloutDecision) -> None:
        s: RolloutState = decision.state
        model, version = s.model, s.canary_version
        if decision.event:
            self.get(N.ROLLOUT_DECISIONS).labels(model, version, decision.event).inc()
        self.get(N.ROLLOUT_CANARY_WEIGHT).labels(model, version).set(float(decision.weights.get(version, 0.0)))
        serving = s.serving_phase is Phase.CANARY and s.step_index is not None
        self.get(N.ROLLOUT_STEP).labels(model, version).set(s.step_index + 1 if serving else 0)
        if decision.verdict is not None:
            for check in decision.verdict.checks:
                self.get(N.ROLLOUT_GUARDRAIL_VALUE).labels(model, version, check.name).set(check.canary)
                self.get(N.ROLLOUT_GUARDRAIL_LIMIT).labels(model, version, check.name).set(check.limit)
