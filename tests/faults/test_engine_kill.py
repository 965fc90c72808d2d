"""The engine core process of a replica killed mid-request: open requests end with a visible
error (a 503 with an OpenAI-shaped body, or a stream's error event and no choice marked
complete), never a hang or a silent `stop`; the replica reports unhealthy and Serve replaces
it. Once streams resume on another replica (migration), a complete, correct answer is the
other accepted outcome."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.faults.harness import APP, KEY, engine_core, replica_process, stream_verdict
from tests.fixtures.ray_serve import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.redis]

BODY = {"prompt": "def main(", "max_tokens": 1500, "temperature": 0, "ignore_eos": True}


def test_engine_core_killed_mid_request(healthy):
    app = healthy
    reference = app.complete(max_tokens=1500, ignore_eos=True, timeout=300).json()["choices"][0]["text"]
    replica_pid = replica_process(APP, "model-tiny-llama").pid
    core = engine_core(APP)
    assert core is not None, "the native engine runs its core in a child process (engine_process: true)"

    results: dict = {}
    streaming = threading.Event()

    def stream():
        lines, text = [], []
        with httpx.stream("POST", app.base_url + "/v1/completions", timeout=120, headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": app.model, "stream": True, **BODY}) as r:
            results["stream_status"] = r.status_code
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    if line.startswith("data: {") and '"text"' in line:
                        text.append(json.loads(line[6:])["choices"][0]["text"])
                        streaming.set()
        results["stream"] = (stream_verdict(lines), "".join(text), lines[-3:])

    def unary():
        r = app.complete(timeout=120, **{k: v for k, v in BODY.items() if k != "prompt"})
        results["unary"] = (r.status_code, r.json())

    threads = [threading.Thread(target=stream), threading.Thread(target=unary)]
    for t in threads:
        t.start()
    assert streaming.wait(120), "the stream never started"
    core.kill()
    for t in threads:
        t.join(150)
    assert not any(t.is_alive() for t in threads), "a request hung after its engine died"

    verdict, text, tail = results["stream"]
    assert results["stream_status"] == 200
    assert verdict == "error-event" or (verdict == "complete" and text == reference), (verdict, tail)
    if verdict == "error-event":
        assert any("engine" in line.lower() or "replica" in line.lower() for line in tail), tail  # a clear message
    status, body = results["unary"]
    assert (status == 503 and "error" in body) or (status == 200 and body["choices"][0]["text"] == reference), (status, body)

    # Serve sees the replica unhealthy and replaces it; the new one serves.
    wait_for(lambda: replica_process(APP, "model-tiny-llama").pid != replica_pid, 120, "Serve to replace the replica")
    wait_for(app.serves, 180, "the replacement replica to serve")
