"""Every metric the dashboard and the alert rules read is on a live fleetserve's metrics listeners.

The app is the one `fleetserve serve` deploys (deployments.app.deploy), started once per test
session by the shared ``serve_app`` fixture (tests/fixtures/ray_serve.py). Like Prometheus with
the chart's PodMonitor, the test scrapes each listener on its own: the ingress's (fleetserve_*
series, tenant labels) and every model replica's (engine series under vLLM's names)."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.metrics_scrape import listeners, scrape
from tests.helm.metric_refs import exported_names, referenced_metrics

pytestmark = pytest.mark.ray


def test_live_metrics_cover_dashboard_and_rules(serve_app, helm):
    headers = {"Authorization": f"Bearer {serve_app.api_key}"}
    ok = httpx.post(serve_app.openai_base + "/completions", headers=headers, timeout=60,
                    json={"model": serve_app.model, "prompt": "def main(", "max_tokens": 4})
    assert ok.status_code == 200, ok.text
    # The second test tenant may not use this model: a rejection the tenant metering counts.
    denied = httpx.post(serve_app.openai_base + "/completions", timeout=60,
                        headers={"Authorization": f"Bearer {serve_app.api_key}-other"},
                        json={"model": serve_app.model, "prompt": "x", "max_tokens": 1})
    assert denied.status_code == 403, denied.text
    found = listeners(serve_app.base_url, serve_app.admin_key)
    assert found.replicas, "no model replica advertises a metrics listener"
    text = scrape(found.ingress, serve_app.admin_key)
    engine = [scrape(r, serve_app.admin_key) for r in found.replicas]

    missing = referenced_metrics(helm) - exported_names("\n".join([text, *engine]))
    assert not missing, f"not on a live metrics listener: {sorted(missing)}"
    # The traffic above shows up as samples too (names alone would not prove the wiring).
    assert f'fleetserve_time_to_first_token_seconds_bucket{{le="1.0",model="{serve_app.model}",tenant="test"' in text
    assert 'fleetserve_tenant_rejected_total{model="%s",reason="permission_denied",tenant="other"}' % serve_app.model in text
    assert f'fleetserve_warm_replicas{{model="{serve_app.model}",version="v1"}} 0.0' in text
    labels = f'model_name="{serve_app.model}",replica="'
    assert any(f'vllm:kv_cache_usage_perc{{{labels}' in e for e in engine)
    assert any(f'vllm:time_to_first_token_seconds_count{{{labels}' in e for e in engine)
    assert any(f'vllm:request_success_total{{finished_reason="length",{labels}' in e for e in engine)
