"""`fleetserve serve` with no config, as a user runs it: fresh home, tiny checkpoint made,
embedded Ray, demo keys printed, a real completion through the openai client, clean Ctrl-C."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.ray_serve import free_port

pytestmark = pytest.mark.ray

READY_TIMEOUT_S = 240


def _pump(stream, lines: "queue.Queue[str]") -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put("")  # EOF marker


def _wait_for(lines: "queue.Queue[str]", pattern: str, seen: list[str], timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        seen.append(line)
        if line == "":
            break
        m = rx.search(line)
        if m:
            return m
    raise AssertionError(f"no line matching {pattern!r}; output so far:\n{''.join(seen)[-4000:]}")


def test_serve_with_no_arguments(tmp_path: Path):
    from openai import AuthenticationError, OpenAI

    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    # A user's shell, not this test session's cluster: without the Serve variables the session's
    # apply_serve_env set (its haproxy's private ports and state paths would clash).
    for k in [k for k in env if k.startswith("RAY_SERVE_") or k == "RAY_worker_niceness"]:
        del env[k]
    # Keep the compiled CPU kernel cache of the real home so this test does not rebuild it.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetserve", "serve", "--port", str(port), "--grpc-port", str(grpc_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        _wait_for(lines, rf"REST \(OpenAI\) : http://127\.0\.0\.1:{port}/v1", seen, READY_TIMEOUT_S)
        direct = _wait_for(lines, r"REST \(direct\) : (http://127\.0\.0\.1:\d+/v1)", seen, 10).group(1)
        _wait_for(lines, rf"gRPC\s+: 127\.0\.0\.1:{grpc_port}", seen, 10)
        api_key = _wait_for(lines, r"API key\s+: (\S+)", seen, 10).group(1)
        admin_key = _wait_for(lines, r"admin key\s+: (\S+)", seen, 10).group(1)
        assert (tmp_path / ".cache/fleetserve/models/tiny-llama/config.json").is_file()

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0)
        out = client.completions.create(model="tiny-llama", prompt="def main(", max_tokens=8, temperature=0)
        assert out.usage.completion_tokens == 8 and out.choices[0].finish_reason == "length"
        # The ingress replica's own port (no proxy hop) serves the same API, streaming included.
        direct_client = OpenAI(base_url=direct, api_key=api_key, max_retries=0)
        chunks = list(direct_client.completions.create(model="tiny-llama", prompt="def main(", max_tokens=8, temperature=0,
                                                        stream=True))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
        with pytest.raises(AuthenticationError):  # auth holds on the direct port too
            OpenAI(base_url=direct, api_key="fs-wrong-key-0123456789", max_retries=0).completions.create(
                model="tiny-llama", prompt="x", max_tokens=1)

        status = subprocess.run(
            [sys.executable, "-m", "fleetserve", "status", "--url", f"http://127.0.0.1:{port}", "--admin-key", admin_key],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert status.returncode == 0, status.stderr
        assert "tiny-llama" in status.stdout
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert rc == 0, "".join(seen)[-4000:]
