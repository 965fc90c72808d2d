"""Fleet preemption through the real serving path (Ray Serve on loopback, REST, native engine).

A second application with ONE slot (fleet and engine): a batch tenant's long greedy stream
holds it; a premium request arrives, is dispatched at once and the engine preempts the batch
request. Premium finishes first; the batch stream only pauses: its text equals the same
request run alone (nothing lost, nothing repeated) and the fleet counted the preemption.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.fixtures.ray_serve import wait_for

pytestmark = pytest.mark.ray

APP = "fleetserve-preempt-test"
PREFIX = "/preempt"
BATCH_KEY = "fs-preempt-batch-0123456789abcdef"
PREMIUM_KEY = "fs-preempt-premium-0123456789abcdef"
BATCH_TOKENS = 600


@pytest.fixture(scope="module")
def one_slot_app(serve_app):
    from ray import serve

    from fleetserve.application.build import deploy
    from tests.admission.one_slot_app import one_slot_config

    cfg = one_slot_config(serve_app, APP, PREFIX, BATCH_KEY, PREMIUM_KEY)
    deploy(cfg, start=False)
    base = serve_app.base_url + PREFIX
    wait_for(lambda: complete(base, PREMIUM_KEY, serve_app.model, 1).status_code == 200, 180, "the one-slot app")
    yield base, serve_app.model
    serve.delete(APP)


def complete(base: str, key: str, model: str, max_tokens: int, stream: bool = False) -> httpx.Response:
    return httpx.post(base + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"model": model, "prompt": "def fibonacci(n):", "max_tokens": max_tokens,
                            "temperature": 0, "ignore_eos": True, "stream": stream})


def preemptions(base: str) -> float:
    from tests.fixtures.metrics_scrape import ingress_metrics, metric_sum
    from tests.fixtures.ray_serve import TEST_ADMIN_KEY

    return metric_sum(ingress_metrics(base, TEST_ADMIN_KEY), "fleetserve_fleet_preemptions_total{")


def test_premium_preempts_a_batch_stream_which_resumes_losing_nothing(one_slot_app):
    base, model = one_slot_app
    reference = complete(base, BATCH_KEY, model, BATCH_TOKENS).json()["choices"][0]["text"]
    before = preemptions(base)

    chunks: list[str] = []
    finished: list[str] = []
    started = threading.Event()

    def batch_stream():
        with httpx.stream("POST", base + "/v1/completions", headers={"Authorization": f"Bearer {BATCH_KEY}"},
                          timeout=120, json={"model": model, "prompt": "def fibonacci(n):", "max_tokens": BATCH_TOKENS,
                                             "temperature": 0, "ignore_eos": True, "stream": True}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choice = json.loads(line[6:])["choices"]
                    if choice:
                        chunks.append(choice[0]["text"])
                        started.set()
        finished.append("batch")

    t = threading.Thread(target=batch_stream)
    t.start()
    assert started.wait(60), "the batch stream never started"
    premium = complete(base, PREMIUM_KEY, model, 8)
    finished.append("premium")
    t.join(120)
    assert not t.is_alive()

    assert premium.status_code == 200 and premium.json()["usage"]["completion_tokens"] == 8
    assert finished == ["premium", "batch"]  # premium did not wait for the batch stream
    assert "".join(chunks) == reference  # paused and resumed: nothing lost or repeated
    deadline = time.monotonic() + 10
    while preemptions(base) <= before:  # the counter is exported when the stream ends
        assert time.monotonic() < deadline, "the fleet did not count a preemption"
        time.sleep(0.1)
