"""Every exported series comes from a spec in fleetserve.metrics.names, with the spec's labels."""

from prometheus_client import CollectorRegistry

from fleetserve.admission.metrics import admission_metrics
from fleetserve.autoscaler.controller_metrics import ControllerMetrics
from fleetserve.canary.rollout_metrics import RolloutMetrics
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.metering import tenant_metrics


def test_spec_names_are_unique_and_counters_end_in_total():
    names = [s.name for s in N.ALL]
    assert len(names) == len(set(names))
    assert all(s.name.endswith("_total") for s in N.ALL if s.kind == "counter")
    assert all((s.buckets is not None) == (s.kind == "histogram") for s in N.ALL)


def test_the_ingress_registry_exports_exactly_the_declared_metrics_with_their_labels():
    fm = FleetMetrics(CollectorRegistry())
    tm = tenant_metrics(fm.registry)  # the gatekeeper's series share the ingress's registry
    am = admission_metrics(fm.registry)  # so do the admission queues
    cm = ControllerMetrics(fm.registry)  # the scaling controller's series, mirrored by the ingress
    rm = RolloutMetrics(fm.registry)  # and the rollout executor
    collectors = {spec: fm.get(spec) for spec in N.INGRESS}
    collectors.update(cm.collectors)
    collectors.update({N.TENANT_REQUESTS: tm.requests, N.TENANT_PROMPT_TOKENS: tm.prompt_tokens,
                       N.TENANT_COMPLETION_TOKENS: tm.completion_tokens, N.TENANT_REJECTED: tm.rejected,
                       N.FLEET_QUEUE_WAIT: am.queue_wait, N.FLEET_SHED: am.shed, N.FLEET_PREEMPTIONS: am.preemptions})
    collectors.update({spec: rm.get(spec) for spec in N.ROLLOUT})
    assert set(collectors) == set(N.ALL)
    for spec, c in collectors.items():
        c.labels(**{label: "x" for label in spec.labels})  # raises on any other label set
    exported = {m.name for m in fm.registry.collect()}
    # prometheus_client names a counter's family without its _total suffix
    assert exported == {s.name.removesuffix("_total") if s.kind == "counter" else s.name for s in N.ALL}
