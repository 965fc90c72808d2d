"""The scaling controller's Prometheus series (names in :mod:`fleetserve.metrics.names`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from fleetserve.autoscaler.actuator import FleetId, ObservedFleet
from fleetserve.autoscaler.controller_state import FleetState
from fleetserve.autoscaler.decision import ScalingDecision
from fleetserve.autoscaler.snapshot import CapacityType
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import build_metric


class ControllerMetrics:
    """The CONTROLLER series in ``registry``; pass as the controller's ``observer``. The warm
    pool's size is not among them: the ingress exports ``fleetserve_warm_replicas`` from the
    replicas' own reports, the one source dashboards and alerts read."""

    def __init__(self, registry: CollectorRegistry):
        self.collectors = {spec: build_metric(spec, registry) for spec in N.CONTROLLER}

    def __call__(self, f: FleetId, obs: ObservedFleet, d: ScalingDecision, st: FleetState) -> None:
        m = {spec.name: c for spec, c in self.collectors.items()}
        m[N.TARGET_REPLICAS.name].labels(f.model, f.version).set(d.target_replicas)
        m[N.SCALING_DEMAND.name].labels(f.model, f.version).set(
            obs.queued + sum(r.running for r in obs.replicas))
        for ctype in CapacityType:
            serving = sum(1 for r in obs.replicas if r.capacity_type is ctype
                          and st.roles.get(r.replica_id) == "serving" and r.replica_id not in st.draining)
            m[N.SERVING_REPLICAS.name].labels(f.model, f.version, ctype.value).set(serving)
        actions = m[N.SCALING_ACTIONS.name]
        if d.activate:
            actions.labels(f.model, f.version, "activate").inc(len(d.activate))
        if d.cold_starts:
            actions.labels(f.model, f.version, "cold_start").inc(sum(c.count for c in d.cold_starts))
        if d.drains:
            actions.labels(f.model, f.version, "drain").inc(len(d.drains))
