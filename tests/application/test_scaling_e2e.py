"""End to end on real Ray Serve, through REST with the official openai client, with the
scaling controller on (``autoscaler.controller``): a burst raises the serving count by waking
the warm standby, and the pool refills; a scale-down while 16 streams run fails none of them
(the replica the policy removes drains first)."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.fixtures.ray_serve import TEST_API_KEY, wait_for
from tests.fixtures.scaling_app import ADMIN, actions, deployed, fleet, scaling_config

pytestmark = pytest.mark.ray

APP, PREFIX = "fs-scaling", "/scaling"


@pytest.fixture(scope="module")
def scaling_app(serve_app):
    cfg = scaling_config(serve_app, APP, PREFIX, model={
        "engine_args": {"num_kv_blocks": 256, "max_num_seqs": 32, "num_threads": 1, "engine_process": False},
        "resources": {"num_cpus": 0.25}, "max_ongoing_requests": 64, "drain_timeout_s": 60,
        "replicas": {"num": 1, "min": 1, "max": 3}}, defaults={
        "scaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_per_replica": 4,
                    "downscale_delay_s": 2, "downscale_cooldown_s": 1},
        "warm_pool": {"min_size": 1, "max_size": 1}})
    with deployed(serve_app, cfg) as base:
        yield base


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
