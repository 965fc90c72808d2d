"""One admission queue for two ingress replicas (``scope: auto`` with ``ingress_replicas: 2``).

Real Ray Serve on loopback, REST to each ingress replica's own port (Serve direct ingress,
what haproxy forwards to), the native engine with ONE slot fleet-wide. A batch stream holds
the slot through ingress 0; a second batch request sent to ingress 1 must wait in the
shared queue actor (a queue per ingress would have dispatched it: ingress 1 runs nothing),
and a premium request sent to ingress 1 still goes first.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.fixtures.ray_serve import wait_for

pytestmark = pytest.mark.ray

APP = "fleetserve-cluster-queue-test"
PREFIX = "/cq"
BATCH_KEY = "fs-cq-batch-0123456789abcdefgh"
PREMIUM_KEY = "fs-cq-premium-0123456789abcdefgh"
LONG_TOKENS = 600


@pytest.fixture(scope="module")
def two_ingress_app(serve_app):
    from ray import serve

    from fleetserve.application.build import deploy
    from fleetserve.deployments.direct_ingress import direct_http_urls
    from tests.admission.one_slot_app import one_slot_config

    cfg = one_slot_config(serve_app, APP, PREFIX, BATCH_KEY, PREMIUM_KEY, ingress_replicas=2)
    deploy(cfg, start=False)
    urls: list[str] = []

    def both_ready() -> bool:
        urls[:] = [u + PREFIX for u in direct_http_urls(APP, "127.0.0.1")]  # each replica serves the app's route prefix
        return len(urls) == 2 and all(complete(u, PREMIUM_KEY, serve_app.model, 1).status_code == 200 for u in urls)

    wait_for(both_ready, 180, "both ingress replicas of the two-ingress app")
    yield urls, serve_app.model
    serve.delete(APP)
    from fleetserve.admission.cluster_queue import kill_queue_actors

    kill_queue_actors(APP)  # detached: it would otherwise idle on in the session's cluster until its idle exit


def complete(base: str, key: str, model: str, max_tokens: int) -> httpx.Response:
    return httpx.post(base + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"model": model, "prompt": "def fibonacci(n):", "max_tokens": max_tokens,
                            "temperature": 0, "ignore_eos": True})


def queue_stats(model: str) -> dict:
    import ray

    from fleetserve.admission.cluster_queue import QUEUE_NAMESPACE, queue_actor_names

    (name,) = queue_actor_names(APP)  # one config, one actor, whichever ingress made it
    actor = ray.get_actor(name, namespace=QUEUE_NAMESPACE)
    return ray.get(actor.stats.remote(), timeout=30)[model]


def preemptions(urls: list[str]) -> float:
    """``fleetserve_fleet_preemptions_total`` summed over the ingress replicas' own metrics listeners."""
    from tests.fixtures.metrics_scrape import ingress_metrics, metric_sum
    from tests.fixtures.ray_serve import TEST_ADMIN_KEY

    return sum(metric_sum(ingress_metrics(base, TEST_ADMIN_KEY), "fleetserve_fleet_preemptions_total{") for base in urls)


class Stream(threading.Thread):
    """A streamed completion; records when its first chunk and its end arrived."""

    def __init__(self, base: str, key: str, model: str, max_tokens: int):
        super().__init__(daemon=True)
        self.args = (base, key, model, max_tokens)
        self.first_at = None
        self.done_at = None
        self.status = None
        self.tokens = 0
        self.started = threading.Event()

    def run(self):
        base, key, model, max_tokens = self.args
        with httpx.stream("POST", base + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          json={"model": model, "prompt": "def fibonacci(n):", "max_tokens": max_tokens, "temperature": 0,
                                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}) as r:
            self.status = r.status_code
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                body = json.loads(line[6:])
                if body.get("choices") and self.first_at is None:
                    self.first_at = time.monotonic()
                    self.started.set()
                if body.get("usage"):
                    self.tokens = body["usage"]["completion_tokens"]
        self.done_at = time.monotonic()


def test_two_ingress_replicas_share_one_queue_with_strict_priority(two_ingress_app):
    (ingress0, ingress1), model = two_ingress_app
    before = queue_stats(model)
    exported_before = preemptions([ingress0, ingress1])

    long_batch = Stream(ingress0, BATCH_KEY, model, LONG_TOKENS)
    long_batch.start()
    assert long_batch.started.wait(60), "the long batch stream never started"

    waiting_batch = Stream(ingress1, BATCH_KEY, model, 4)
    waiting_batch.start()
    # The fleet's one slot is busy (through ingress 0): ingress 1's batch request waits in the
    # shared queue, not in the engine.
    wait_for(lambda: queue_stats(model)["queued"] == {2: 1}, 30, "the second batch request queued in the shared queue")
    assert waiting_batch.first_at is None

    premium = complete(ingress1, PREMIUM_KEY, model, 8)
    premium_done = time.monotonic()
    assert premium.status_code == 200 and premium.json()["usage"]["completion_tokens"] == 8
    assert long_batch.done_at is None or premium_done < long_batch.done_at  # premium did not wait for the batch stream

    long_batch.join(120)
    waiting_batch.join(120)
    assert long_batch.status == 200 and long_batch.tokens == LONG_TOKENS
    assert waiting_batch.status == 200 and waiting_batch.tokens == 4
    # Every release reaches the shared queue (sent when the ingress closes the stream, just after [DONE]).
    wait_for(lambda: queue_stats(model)["running"] == 0, 15, "the shared queue to see every release")
    stats = queue_stats(model)
    assert stats["queued"] == {} and stats["dispatched"] - before["dispatched"] == 3
    # The premium request took the batch stream's slot by preemption in the actor; the ingress
    # that got its verdict exported it, once.
    preempted = stats["preempted"] - before["preempted"]
    assert preempted >= 1 and preemptions([ingress0, ingress1]) - exported_before == preempted
