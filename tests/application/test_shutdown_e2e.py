"""Deleting the whole application in drain mode ``migrate`` fails no stream (issue 23, item 4).

There is nowhere to migrate a request when every replica stops at once, so the stopping
replicas let their streams finish (``deployments/shutdown_drain.py``) while the ingress's
graceful shutdown keeps the client connections open. Real Ray Serve (the suite's shared
session), the official openai client, its own application so the shared one stays up."""

from __future__ import annotations

import threading

import pytest

from tests.fixtures.ray_serve import TEST_API_KEY, wait_for

pytestmark = pytest.mark.ray

APP, PREFIX = "fs-shutdown", "/shutdown"
N, MAX_TOKENS = 6, 200


def test_deleting_the_app_in_migrate_mode_finishes_every_stream(serve_app):
    import httpx
    from openai import OpenAI
    from ray import serve

    from fleetserve.application.build import deploy
    from fleetserve.config import parse_config
    from fleetserve.tenants.keys import hash_api_key

    cfg = parse_config({
        "server": {"host": "127.0.0.1", "port": int(serve_app.base_url.rsplit(":", 1)[1]), "grpc_port": None,
                   "app_name": APP, "route_prefix": PREFIX},
        "models": [{"name": serve_app.model, "checkpoint": serve_app.checkpoint, "drain_mode": "migrate",
                    "engine_args": {"num_kv_blocks": 256, "max_num_seqs": 16, "num_threads": 1, "engine_process": False},
                    "resources": {"num_cpus": 0.25}, "max_ongoing_requests": 32, "drain_timeout_s": 60}],
        "tenants": {"tenants": [{"id": "test", "tier": "standard", "api_key_hashes": [hash_api_key(TEST_API_KEY)]}]},
    })
    deploy(cfg, start=False)
    base = serve_app.base_url + PREFIX
    wait_for(lambda: httpx.post(base + "/v1/completions", headers={"Authorization": f"Bearer {TEST_API_KEY}"},
                                json={"model": serve_app.model, "prompt": "hi", "max_tokens": 1}, timeout=30
                                ).status_code == 200, 180, "the app to answer")
    client = OpenAI(base_url=base + "/v1", api_key=TEST_API_KEY, max_retries=0, timeout=300)
    results: dict[int, tuple] = {}
    started = threading.Semaphore(0)

    def one(i: int) -> None:
        try:
            stream = client.completions.create(model=serve_app.model, prompt=f"def g{i}(", max_tokens=MAX_TOKENS,
                                               temperature=0, stream=True, stream_options={"include_usage": True},
                                               extra_body={"ignore_eos": True})
            text, finish, usage, first = "", None, None, True
            for c in stream:
                if c.choices:
                    if first:
                        started.release()
                        first = False
                    text += c.choices[0].text
                    finish = c.choices[0].finish_reason or finish
                if c.usage is not None:
                    usage = c.usage.completion_tokens
            results[i] = ("ok", finish, usage)
        except Exception as exc:  # noqa: BLE001 - asserted below
            results[i] = ("error", repr(exc), None)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(N)]
    for t in threads:
        t.start()
    for _ in range(N):
        assert started.acquire(timeout=120), "a stream never started"
    serve.delete(APP, _blocking=False)  # every replica of the app stops at once
    for t in threads:
        t.join(300)
    assert results == {i: ("ok", "length", MAX_TOKENS) for i in range(N)}
