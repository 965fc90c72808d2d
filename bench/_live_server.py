"""``fleetserve serve --config`` as an operator runs it, for benchmarks that need a live server.

``live_server(cfg, base_url)`` takes the machine's shared Ray lock (two Ray sessions on one
small machine fight over ports and CPUs), writes ``cfg`` as YAML, starts the CLI in its own
process group, waits for ``/health`` and yields the process; on exit it stops the server with
Ctrl-C (Serve and Ray shut down) and kills the group if that hangs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

RAY_LOCK = "/tmp/fleetserve-ray.lock"
READY_LINE = b"Ctrl-C to stop"  # the last line of `fleetserve serve`'s banner


def start_server(cfg: dict, workdir: Path) -> subprocess.Popen:
    import yaml

    path = workdir / "fleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(workdir / "serve.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "fleetserve", "serve", "--config", str(path)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())


def wait_healthy(proc: subprocess.Popen, base: str, log: Path, timeout_s: float = 300.0) -> None:
    """Until the CLI printed its banner (it waits for every deployment, model replicas
    included: the ingress answers /health before a replica can serve) and /health answers."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fleetserve serve exited with {proc.returncode} before it was ready")
        try:
            if READY_LINE in log.read_bytes() and httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"fleetserve serve not ready within {timeout_s:.0f}s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def live_server(cfg: dict, base: str, lock_path: str = RAY_LOCK) -> Iterator[subprocess.Popen]:
    with open(lock_path, "a") as lock, tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        print(f"waiting for the Ray lock {lock_path} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = start_server(cfg, Path(tmp))
        try:
            wait_healthy(proc, base, Path(tmp) / "serve.log")
            yield proc
        finally:
            stop_server(proc)
            if proc.returncode not in (0, -signal.SIGINT):
                print((Path(tmp) / "serve.log").read_text()[-4000:], file=sys.stderr)
