"""End to end on real Ray Serve: a node drain through the admin API (as the spot watcher sends
it) stops the replica taking new work while the stream it serves finishes with every token;
a request sent during the drain waits and is served once the replica resumes."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.fixtures.ray_serve import wait_for

pytestmark = pytest.mark.ray


def status_row(serve_app) -> dict:
    admin = {"Authorization": f"Bearer {serve_app.admin_key}"}
    models = httpx.get(serve_app.base_url + "/admin/status", headers=admin, timeout=30).json()["models"]
    (model,) = [m for m in models if m["name"] == serve_app.model]  # the session app may serve a vLLM twin too
    (row,) = model["replicas"]
    return row


def test_node_drain_finishes_the_stream_and_resume_serves_the_waiting_request(serve_app):
    from openai import OpenAI

    admin = {"Authorization": f"Bearer {serve_app.admin_key}"}
    client = OpenAI(base_url=serve_app.openai_base, api_key=serve_app.api_key, max_retries=0, timeout=120)
    row = status_row(serve_app)
    assert row["node_ip"] and not row["draining"]
    kw = dict(model=serve_app.model, prompt="def main(", max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
    stream = client.completions.create(stream=True, **kw)
    chunks = iter(stream)
    first = next(chunks)
    drained = [row["replica"]]
    try:
        body = {"source": "kubernetes", "reason": "test", "pods": [{"name": "worker-0", "ip": row["node_ip"]}],
                "mode": "finish"}  # the only replica: nowhere to migrate to
        r = httpx.post(f"{serve_app.base_url}/admin/nodes/k8s-node-0/drain", headers=admin, json=body, timeout=30)
        assert r.status_code == 202
        drained = [x["replica"] for x in r.json()["replicas"]]  # every replica of the app on that node
        assert (row["replica"], True) in [(x["replica"], x["applied"]) for x in r.json()["replicas"]]
        text = first.choices[0].text + "".join(c.choices[0].text for c in chunks if c.choices)
        wait_for(lambda: status_row(serve_app)["draining"], 30, "the stats to report the drain")
        late: dict = {}
        sender = threading.Thread(target=lambda: late.update(r=client.completions.create(**kw)))
        sender.start()  # the only replica is draining: this one waits for capacity
    finally:
        for replica in drained:
            r = httpx.post(f"{serve_app.base_url}/admin/replicas/{replica}/resume", headers=admin, timeout=30)
            assert r.status_code == 200 and r.json()["draining"] is False
    sender.join(timeout=120)
    unary = client.completions.create(**kw)
    assert text == unary.choices[0].text and unary.usage.completion_tokens == 48  # every token, none repeated
    assert late["r"].choices[0].text == text  # the request sent during the drain was served, not failed
    wait_for(lambda: not status_row(serve_app)["draining"], 30, "the stats to report the resume")
