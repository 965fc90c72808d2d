"""End to end on real Ray Serve with the official `openai` client: a response id gets feedback
from its own tenant only, and the admin A/B report counts the variant that served it."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.metrics_scrape import ingress_metrics

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def client(serve_app):
    from openai import OpenAI

    return OpenAI(base_url=serve_app.openai_base, api_key=serve_app.api_key, max_retries=0, timeout=120)


def feedback(serve_app, key: str, rid: str, outcome) -> httpx.Response:
    return httpx.post(serve_app.openai_base + "/feedback", json={"id": rid, "outcome": outcome}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})


def test_feedback_and_report_through_serve(client, serve_app):
    admin = {"Authorization": f"Bearer {serve_app.admin_key}"}
    before = httpx.get(f"{serve_app.base_url}/admin/ab/{serve_app.model}", headers=admin, timeout=30).json()
    chat = client.chat.completions.create(model=serve_app.model, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, temperature=0)
    stream = client.completions.create(model=serve_app.model, prompt="def f(x):", max_tokens=4, stream=True)
    streamed_id = {chunk.id for chunk in stream}
    assert len(streamed_id) == 1

    other = feedback(serve_app, serve_app.api_key + "-other", chat.id, True)
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    ok = feedback(serve_app, serve_app.api_key, chat.id, True)
    assert ok.status_code == 200, ok.text
    assert ok.json()["version"] == serve_app.config.models[0].version
    assert feedback(serve_app, serve_app.api_key, streamed_id.pop(), 0).status_code == 200  # after the stream ended
    assert feedback(serve_app, serve_app.api_key, chat.id, False).status_code == 409

    after = httpx.get(f"{serve_app.base_url}/admin/ab/{serve_app.model}", headers=admin, timeout=30).json()
    v_before = {v["version"]: v for v in before["variants"]}
    v = after["variants"][0]
    prev = v_before.get(v["version"], {"requests": 0, "feedback": 0, "positive": 0})
    assert v["requests"] - prev["requests"] >= 2
    assert (v["feedback"] - prev["feedback"], v["positive"] - prev["positive"]) == (2, 1)
    assert v["ttft_s"]["p50"] is not None
    from prometheus_client.parser import text_string_to_metric_families

    metrics = ingress_metrics(serve_app.base_url, serve_app.admin_key)
    want = {"tenant": "test", "model": serve_app.model, "version": v["version"], "outcome": "positive"}
    samples = [s for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "fleetserve_feedback_total" and s.labels == want]
    assert [s.value for s in samples] == [1.0]  # one ingress replica in the test app: it served the feedback too
