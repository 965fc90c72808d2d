"""End to end on real Ray Serve, through REST with the official openai client, with the
scaling controller on (``autoscaler.controller``): a burst raises the serving count by waking
the warm standby, and the pool refills; a scale-down while 16 streams run fails none of them
(the replica the policy removes drains first)."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.fixtures.metrics_scrape import scrape
from tests.fixtures.ray_serve import TEST_ADMIN_KEY, TEST_API_KEY, wait_for

pytestmark = pytest.mark.ray

APP, PREFIX = "fs-scaling", "/scaling"
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


@pytest.fixture(scope="module")
def scaling_app(serve_app):
    import ray
    from ray import serve

    from fleetserve.application.build import deploy
    from fleetserve.application.scaling_controller import ACTOR_NAME
    from fleetserve.config import parse_config
    from fleetserve.tenants.keys import hash_api_key

    cfg = parse_config({
        "server": {"host": "127.0.0.1", "port": int(serve_app.base_url.rsplit(":", 1)[1]), "grpc_port": None,
                   "app_name": APP, "route_prefix": PREFIX, "admin_key": TEST_ADMIN_KEY},
        "models": [{"name": serve_app.model, "checkpoint": serve_app.checkpoint,
                    "engine_args": {"num_kv_blocks": 256, "max_num_seqs": 32, "num_threads": 1, "engine_process": False},
                    "resources": {"num_cpus": 0.25}, "max_ongoing_requests": 64, "drain_timeout_s": 60,
                    "replicas": {"num": 1, "min": 1, "max": 3}}],
        "tenants": {"tenants": [{"id": "test", "tier": "standard", "api_key_hashes": [hash_api_key(TEST_API_KEY)]}]},
        "autoscaler": {"controller": True, "tick_interval_s": 0.5, "defaults": {
            "scaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_per_replica": 4,
                        "downscale_delay_s": 2, "downscale_cooldown_s": 1},
            "warm_pool": {"min_size": 1, "max_size": 1}}},
    })
    deploy(cfg, start=False)
    yield serve_app.base_url + PREFIX
    serve.delete(APP)
    ray.kill(ray.get_actor(ACTOR_NAME, namespace="serve"))


def fleet(base: str) -> dict:
    (f,) = httpx.get(base + "/admin/scaling", headers=ADMIN, timeout=30).json()["fleets"].values()
    return f


def actions(base: str, action: str) -> float:
    """From the ingress's private metrics listener (the REST port serves no metrics)."""
    assert httpx.get(base + "/metrics/scaling", timeout=30).status_code == 404
    address = httpx.get(base + "/admin/status", headers=ADMIN, timeout=30).json()["metrics"]
    assert httpx.get(f"http://{address}/metrics/scaling", timeout=30).status_code == 401
    text = scrape(address, TEST_ADMIN_KEY, "/metrics/scaling")
    for line in text.splitlines():
        if line.startswith("fleetserve_scaling_actions_total{") and f'action="{action}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_streams(base: str, model: str, n: int, max_tokens: int, results: list) -> list[threading.Thread]:
    from openai import OpenAI

    client = OpenAI(base_url=base + "/v1", api_key=TEST_API_KEY, max_retries=0, timeout=300)

    def one(i: int):
        try:
            stream = client.completions.create(model=model, prompt=f"def f{i}(", max_tokens=max_tokens, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True})
            text, finish = "", None
            for c in stream:
                if c.choices:
                    text += c.choices[0].text
                    finish = c.choices[0].finish_reason or finish
            results.append(("ok", finish, text))
        except Exception as exc:  # noqa: BLE001 - recorded, asserted below
            results.append(("error", repr(exc), ""))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_burst_wakes_the_standby_and_the_pool_refills_then_scale_down_fails_no_stream(scaling_app, serve_app):
    base = scaling_app
    wait_for(lambda: len(fleet(base)["serving"]) == 1 and len(fleet(base)["standby"]) == 1, 300,
             "one serving replica and a parked standby")
    burst: list = []
    threads = run_streams(base, serve_app.model, 16, 160, burst)
    wait_for(lambda: actions(base, "activate") >= 1, 120, "the controller to wake the standby")
    wait_for(lambda: len(fleet(base)["serving"]) >= 2, 60, "a second serving replica")
    for t in threads:
        t.join(300)
    assert [r[:2] for r in burst] == [("ok", "length")] * 16
    wait_for(lambda: len(fleet(base)["standby"]) == 1 and not fleet(base)["pending"], 300, "the pool to refill")

    scale = lambda body: httpx.post(base + "/admin/scaling/" + serve_app.model, json=body, headers=ADMIN,  # noqa: E731
                                    timeout=30).status_code
    assert scale({"min_replicas": 2}) == 200  # hold two serving replicas for the scale-down below
    wait_for(lambda: len(fleet(base)["serving"]) == 2 and not fleet(base)["draining"], 300, "two serving replicas")
    drains_before = actions(base, "drain")
    down: list = []
    threads = run_streams(base, serve_app.model, 16, 300, down)
    wait_for(lambda: in_flight(base) >= 8, 120, "the 16 streams to be running")
    assert scale({"min_replicas": 1, "max_replicas": 1}) == 200
    wait_for(lambda: actions(base, "drain") > drains_before, 120, "a scale-down drain during the streams")
    assert in_flight(base) > 0  # the drain came while streams were still running
    for t in threads:
        t.join(300)
    assert [r[:2] for r in down] == [("ok", "length")] * 16  # none failed, none cut short
    wait_for(lambda: len(fleet(base)["serving"]) == 1, 180, "one serving replica after the scale-down")


def in_flight(base: str) -> int:
    rows = httpx.get(base + "/admin/replicas", headers=ADMIN, timeout=30).json()["replicas"]
    return sum(r["in_flight"] for r in rows)
