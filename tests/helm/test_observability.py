"""Alert rules (promtool check + unit tests) and the Grafana dashboard: valid PromQL, and
every metric they read is one fleetserve exports (offline here; test_metrics_live.py scrapes
a live fleetserve for the same names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helm.conftest import render
from tests.helm.metric_refs import DASHBOARD, dashboard_queries, exported_names, referenced_metrics, rule_groups
from tests.helm.promql import grafana_to_promql, metric_names
from tests.helm.tools import ToolUnavailable, run, system_tool


@pytest.fixture(scope="session")
def promtool() -> Path:
    try:
        return system_tool("promtool", "apt-get install -y prometheus (Debian's package ships promtool; .ci/run installs it)")
    except ToolUnavailable as exc:
        pytest.skip(str(exc))


def write_rules(tmp_path: Path, rendered) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(rendered)}))
    return path


@pytest.mark.parametrize("values", ["default", "multi-node-spot"])
def test_promtool_check_rules(helm, promtool, tmp_path, values):
    proc = run([promtool, "check", "rules", write_rules(tmp_path, render(helm, values))])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_check_can_fail(promtool, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum by (model) (rate(x[5m])"}]}]}))
    assert run([promtool, "check", "rules", bad]).returncode != 0


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", path])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_covers_the_issue(helm):
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("request rate", "time to first token", "time per output token", "queue depth", "kv cache", "preemptions",
                  "shed", "rejections", "serving replicas", "by tenant", "warm pool", "engine"):
        assert topic in titles, topic
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "model", "version", "tenant"}
    cm = render(helm, "default").one("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # Grafana's sidecar picks it up
    assert json.loads(cm["data"]["fleetserve.json"]) == dash


def test_referenced_metrics_are_declared(helm):
    """Offline: the names fleetserve's registries declare (an ingress's listener renders the first
    three, a model replica's the engine series)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from fleetserve.admission.metrics import admission_metrics
    from fleetserve.metrics.registry import FleetMetrics
    from fleetserve.tenants.metering import tenant_metrics

    from fleetserve.metrics.engine_metrics import EngineMetrics

    fleet = FleetMetrics(CollectorRegistry(auto_describe=True))
    tenant_metrics(fleet.registry)
    admission_metrics(fleet.registry)
    replica = CollectorRegistry(auto_describe=True)  # a model replica's listener
    EngineMetrics(replica, "m", "v1", "r1")
    declared = exported_names(generate_latest(fleet.registry).decode() + generate_latest(replica).decode())
    missing = referenced_metrics(helm) - declared
    assert not missing, f"dashboard/rules read metrics fleetserve does not export: {sorted(missing)}"


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model=~"$model", le="1.0"}[$__rate_interval])))'
            ' / ignoring(x) b_total offset 5m and on(model) count(c) > bool 2 or vector(0)')
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


# --- promtool unit tests: each alert fires on the bad case and stays quiet on the good one ---

def ttft_series(slow_per_min: int, total_per_min: int, tenant: str = "t") -> list[dict]:
    labels = f'model="m", version="v1", tenant="{tenant}"'
    fast = total_per_min - slow_per_min
    return [{"series": f'fleetserve_time_to_first_token_seconds_bucket{{{labels}, le="1.0"}}', "values": f"0+{fast}x120"},
            {"series": f"fleetserve_time_to_first_token_seconds_count{{{labels}}}", "values": f"0+{total_per_min}x120"}]


def requests_series(errors_per_min: int, ok_per_min: int) -> list[dict]:
    base = 'tenant="t", model="m", version="v1"'
    return [{"series": f'fleetserve_requests_total{{{base}, status="200"}}', "values": f"0+{ok_per_min}x60"},
            {"series": f'fleetserve_requests_total{{{base}, status="503"}}', "values": f"0+{errors_per_min}x60"}]


def test_promtool_rule_unit_tests(helm, promtool, tmp_path):
    rules = write_rules(tmp_path, render(helm, "default"))
    model = render(helm, "default").one("RayService")
    first_model = yaml.safe_load(model["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]["models"][0]["name"]
    replica = f'vllm:num_requests_running{{model_name="{first_model}", version="v1", replica="r1"}}'
    tests = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [
        {"name": "TTFT: half the requests slow burns the budget fast", "interval": "1m",
         "input_series": ttft_series(slow_per_min=50, total_per_min=100),
         "alert_rule_test": [
             {"eval_time": "1m", "alertname": "FleetserveTTFTBudgetBurnFast", "exp_alerts": []},
             {"eval_time": "10m", "alertname": "FleetserveTTFTBudgetBurnFast", "exp_alerts": [
                 {"exp_labels": {"severity": "page", "model": "m", "version": "v1"},
                  "exp_annotations": {"summary": "m/v1: TTFT SLO budget burning 14x too fast",
                                      "description": "More than 14.4% of requests took longer than 1.0s to the first token over the last hour (SLO 99%)."}}]}]},
        {"name": "TTFT: 0.5% slow is within a 99% SLO", "interval": "1m",
         "input_series": ttft_series(slow_per_min=1, total_per_min=200),
         "alert_rule_test": [{"eval_time": "90m", "alertname": "FleetserveTTFTBudgetBurnFast", "exp_alerts": []},
                             {"eval_time": "90m", "alertname": "FleetserveTTFTBudgetBurnSlow", "exp_alerts": []}]},
        {"name": "errors: 10% 5xx pages after 5 minutes", "interval": "1m",
         "input_series": requests_series(errors_per_min=10, ok_per_min=90),
         "alert_rule_test": [
             {"eval_time": "5m", "alertname": "FleetserveHighErrorRate", "exp_alerts": []},
             {"eval_time": "15m", "alertname": "FleetserveHighErrorRate", "exp_alerts": [
                 {"exp_labels": {"severity": "page", "model": "m", "version": "v1"},
                  "exp_annotations": {"summary": "m/v1: 10% of requests fail with 5xx"}}]}]},
        {"name": "errors: 1% 5xx is below the threshold", "interval": "1m",
         "input_series": requests_series(errors_per_min=1, ok_per_min=99),
         "alert_rule_test": [{"eval_time": "30m", "alertname": "FleetserveHighErrorRate", "exp_alerts": []}]},
        {"name": "queue depth: growing past the threshold", "interval": "1m",
         "input_series": [{"series": 'vllm:num_requests_waiting{model_name="m", version="v1", replica="r1"}', "values": "0+2x60"}],
         "alert_rule_test": [
             {"eval_time": "10m", "alertname": "FleetserveQueueDepthGrowing", "exp_alerts": []},
             {"eval_time": "30m", "alertname": "FleetserveQueueDepthGrowing", "exp_alerts": [
                 {"exp_labels": {"severity": "warning", "model_name": "m", "version": "v1"},
                  "exp_annotations": {"summary": "m: 60 requests waiting in replica queues and still growing"}}]}]},
        {"name": "queue depth: high but draining", "interval": "1m",
         "input_series": [{"series": 'vllm:num_requests_waiting{model_name="m", version="v1", replica="r1"}', "values": "100-1x60"}],
         "alert_rule_test": [{"eval_time": "40m", "alertname": "FleetserveQueueDepthGrowing", "exp_alerts": []}]},
        {"name": "replicas: none reporting is below min", "interval": "1m",
         "input_series": [{"series": 'vllm:num_requests_running{model_name="other", version="v1", replica="x"}', "values": "1x30"}],
         "alert_rule_test": [{"eval_time": "15m", "alertname": "FleetserveReplicasBelowMin", "exp_alerts": [
             {"exp_labels": {"severity": "page", "model_name": first_model},
              "exp_annotations": {"summary": f"{first_model}: 0 serving replicas, fewer than the minimum of 1"}}]}]},
        {"name": "replicas: one reporting meets min", "interval": "1m",
         "input_series": [{"series": replica, "values": "1x30"}],
         "alert_rule_test": [{"eval_time": "15m", "alertname": "FleetserveReplicasBelowMin", "exp_alerts": []}]},
    ]}
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = run([promtool, "test", "rules", test_file.name], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") >= 1
