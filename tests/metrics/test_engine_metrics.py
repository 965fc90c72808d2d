"""Engine series under vLLM's names; vLLM's own mirrored with fleetserve's labels; tenant drop."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from fleetserve.metrics import names as N
from fleetserve.metrics.engine_metrics import EngineLoad, EngineMetrics, RequestTimer, VllmMirror
from fleetserve.metrics.registry import FleetMetrics, build_metric, drop_tenant


def sample(text: str, prefix: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return float(line.rpartition(" ")[2])


def test_a_request_and_the_load_under_vllm_names():
    reg = CollectorRegistry()
    m = EngineMetrics(reg, "tiny", "v1", "r1")
    timer = RequestTimer(arrival=10.0)
    timer.on_output(10.5, 1)   # first token after 0.5 s
    timer.on_output(10.7, 2)   # two more, 0.1 s apart
    timer.on_output(10.8, 0)   # no token: not an interval
    m.observe_finished(timer, 11.0, "length", prompt_tokens=7)
    m.set_load(EngineLoad(num_waiting=3, num_running=2, kv_usage=0.25, preemptions_total=4))
    m.set_load(EngineLoad(num_waiting=3, num_running=2, kv_usage=0.25, preemptions_total=5))
    text = generate_latest(reg).decode()
    labels = 'model_name="tiny",replica="r1",version="v1"'
    assert sample(text, f"vllm:num_requests_waiting{{{labels}}}") == 3
    assert sample(text, f"vllm:num_requests_running{{{labels}}}") == 2
    assert sample(text, f"vllm:kv_cache_usage_perc{{{labels}}}") == 0.25
    assert sample(text, f"vllm:num_preemptions_total{{{labels}}}") == 5
    assert sample(text, f"vllm:prompt_tokens_total{{{labels}}}") == 7
    assert sample(text, f"vllm:generation_tokens_total{{{labels}}}") == 3
    assert sample(text, f'vllm:request_success_total{{finished_reason="length",{labels}}}') == 1
    assert sample(text, f"vllm:time_to_first_token_seconds_sum{{{labels}}}") == 0.5
    assert sample(text, f"vllm:inter_token_latency_seconds_count{{{labels}}}") == 2
    assert abs(sample(text, f"vllm:inter_token_latency_seconds_sum{{{labels}}}") - 0.2) < 1e-9
    assert abs(sample(text, f"vllm:request_time_per_output_token_seconds_sum{{{labels}}}") - 0.1) < 1e-9
    assert sample(text, f"vllm:e2e_request_latency_seconds_sum{{{labels}}}") == 1.0


def test_an_unknown_finish_reason_counts_as_error():
    reg = CollectorRegistry()
    EngineMetrics(reg, "tiny", "v1", "r1").observe_finished(RequestTimer(arrival=0.0), 1.0, None, 0)
    assert 'finished_reason="error"' in generate_latest(reg).decode()


def test_the_mirror_adds_version_and_replica_to_vllm_series_only():
    source = CollectorRegistry()
    Gauge("vllm:num_requests_running", "running", ["model_name", "engine"], registry=source).labels("tiny", "0").set(2)
    Histogram("vllm:time_to_first_token_seconds", "ttft", ["model_name", "engine"], buckets=(1.0,),
              registry=source).labels("tiny", "0").observe(0.5)
    Gauge("process_other", "not vLLM's", registry=source).set(1)
    out = CollectorRegistry()
    out.register(VllmMirror({"version": "v2", "replica": "r9"}, source=source))
    text = generate_latest(out).decode()
    assert 'vllm:num_requests_running{engine="0",model_name="tiny",replica="r9",version="v2"} 2.0' in text
    assert 'vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="tiny",replica="r9",version="v2"} 1.0' in text
    assert "process_other" not in text


def test_a_deleted_tenant_leaves_every_tenant_series():
    fm = FleetMetrics(CollectorRegistry())
    rejected = build_metric(N.TENANT_REJECTED, fm.registry)
    for tenant in ("gone", "kept"):
        fm.observe_request(tenant=tenant, model="m", version="v1", status="200", prompt_tokens=3, completion_tokens=2)
        fm.observe_latency(N.TTFT, 0.1, tenant=tenant, model="m", version="v1")
        rejected.labels(tenant, "m", "quota").inc()
    drop_tenant(fm.registry, "gone")
    text = generate_latest(fm.registry).decode()
    assert 'tenant="gone"' not in text
    assert 'fleetserve_requests_total{model="m",status="200",tenant="kept",version="v1"} 1.0' in text
    assert 'fleetserve_tenant_rejected_total{model="m",reason="quota",tenant="kept"} 1.0' in text


def test_replica_finish_reasons_stop_abort_error():
    from fleetserve.config import ModelConfig
    from fleetserve.deployments.replica_metrics import ReplicaMetrics
    from fleetserve.engine.protocol import EngineStats, RequestOutput

    class IdleEngine:
        def stats(self) -> EngineStats:
            return EngineStats()

    rm = ReplicaMetrics(ModelConfig(name="m", checkpoint="/ckpt"), "r1", IdleEngine())
    done = RequestOutput(request_id="a", finished=True, finish_reason="stop", prompt_tokens=3)
    rm.finish(rm.start_request(), done, finished=True)
    rm.finish(rm.start_request(), None, finished=False)  # caller went away
    rm.finish(rm.start_request(), None, finished=False, failed=True)  # the stream raised
    rm.finish(rm.start_request(), RequestOutput(request_id="b", finished=True, error="boom"), finished=True)
    rm.refresh()
    text = generate_latest(rm.registry).decode()
    labels = 'model_name="m",replica="r1",version="v1"'
    assert sample(text, f'vllm:request_success_total{{finished_reason="stop",{labels}}}') == 1
    assert sample(text, f'vllm:request_success_total{{finished_reason="abort",{labels}}}') == 1
    assert sample(text, f'vllm:request_success_total{{finished_reason="error",{labels}}}') == 2
    assert sample(text, f"vllm:num_requests_running{{{labels}}}") == 0
