"""What the fault tests share: the fault app's config, a load generator that records every
outcome, and finding the processes to kill (by the titles Ray gives them)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import httpx
import psutil

from tests.fixtures.metrics_scrape import ingress_metrics

APP = "fleetserve-faults"
PREFIX = "/faults"
KEY = "fs-faults-tenant-key-Z8q2Lm4Rt6Yw1Px9Kc3V"
LIMITED_KEY = "fs-faults-limited-key-H5n7Bq1Xe3Wr9Tz2Ju4S"  # requests_per_min: 3
SLOT_KEY = "fs-faults-oneslot-key-M2k8Dv6Np4Gs0Lf7Qa1C"  # max_concurrent: 1
ADMIN_KEY = "fs-faults-admin-key-Y7c4Vb2Nm9Qx5Kt1Wp8R"
STALL_TIMEOUT_S = 3.0


def fault_config(checkpoint: str, rest_port: int, admin_port: int, redis_url: str):
    from fleetserve.config import parse_config
    from fleetserve.tenants.keys import hash_api_key

    def tenant(tid: str, key: str, **quotas) -> dict:
        return {"id": tid, "tier": "standard", "api_key_hashes": [hash_api_key(key)],
                "quotas": {"requests_per_min": 100_000, "tokens_per_min": 10_000_000, **quotas}}

    return parse_config({
        "server": {"host": "127.0.0.1", "port": rest_port, "grpc_port": None, "app_name": APP, "route_prefix": PREFIX,
                   "admin_key": ADMIN_KEY, "admin_port": admin_port, "stream_send_timeout_s": STALL_TIMEOUT_S},
        "metrics": {"port": 0},  # any free port; /admin/status names it
        "models": [{
            "name": "tiny-llama", "checkpoint": checkpoint,
            "engine_args": {"num_kv_blocks": 256, "max_num_seqs": 16, "num_threads": 1},
            "resources": {"num_cpus": 0}, "max_ongoing_requests": 32, "drain_timeout_s": 2, "stream_interval_s": 0,
        }],
        "tenants": {
            "redis_url": redis_url, "redis_failure_mode": "fail_closed", "redis_timeout_s": 0.3,
            "redis_retry_interval_s": 0.5, "registry_refresh_s": 0.5, "concurrency_lease_s": 600,
            "tenants": [tenant("faults", KEY, max_concurrent=16), tenant("limited", LIMITED_KEY, requests_per_min=3),
                        tenant("oneslot", SLOT_KEY, max_concurrent=1)],
        },
    })


@dataclass
class FaultApp:
    base_url: str  # through Serve's proxy (haproxy or Python), under PREFIX
    admin_url: str  # the admin listener (server.admin_port)
    model: str
    redis: object  # tests.fixtures.redis_server.RedisServer

    def complete(self, key: str = KEY, max_tokens: int = 4, timeout: float = 60, **body) -> httpx.Response:
        return httpx.post(self.base_url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                          json={"model": self.model, "prompt": "def main(", "max_tokens": max_tokens, "temperature": 0,
                                **body})

    def admin(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.admin_url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                             timeout=30, **kw)

    def replica_rows(self) -> list[dict]:
        (model,) = self.admin("GET", "/admin/status").json()["models"]
        return model["replicas"]

    def serves(self) -> bool:
        return self.complete(max_tokens=1, timeout=20).status_code == 200

    def metric(self, name: str, **labels) -> float:
        text = ingress_metrics(self.admin_url, ADMIN_KEY)
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rpartition(" ")[2])
        return total


@dataclass
class Load:
    """``threads`` clients sending small completions back to back; every outcome is kept."""

    app: FaultApp
    threads: int = 3
    stream: bool = False
    outcomes: list = field(default_factory=list)  # (monotonic time, status code or exception name, detail)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def __enter__(self) -> "Load":
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(90)
        assert not any(w.is_alive() for w in self._workers), "a load client hung"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                outcome = self._one()
            except httpx.HTTPError as exc:  # a connection the platform dropped: kept, judged by the test
                outcome = (type(exc).__name__, str(exc)[:200])
            with self._lock:
                self.outcomes.append((time.monotonic(), *outcome))

    def _one(self) -> tuple:
        if not self.stream:
            r = self.app.complete(max_tokens=4, timeout=60)
            return r.status_code, r.text[:300]
        body = {"model": self.app.model, "prompt": "def main(", "max_tokens": 8, "temperature": 0, "stream": True,
                "ignore_eos": True}
        with httpx.stream("POST", self.app.base_url + "/v1/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            if r.status_code != 200:
                return r.status_code, r.read().decode()[:300]
            return r.status_code, stream_verdict([line for line in r.iter_lines() if line])

    def count(self, status, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for t, s, _ in self.outcomes if s == status and t >= since)

    def summary(self) -> Counter:
        with self._lock:
            return Counter(s for _, s, _ in self.outcomes)


def stream_verdict(lines: list[str]) -> str:
    """'complete' (every choice finished, [DONE]), 'error-event' (an error event and no
    choice left looking complete), or what is wrong with the stream."""
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]
    errors = [e for e in events if "error" in e]
    reasons = [c.get("finish_reason") for e in events for c in e.get("choices", []) if c.get("finish_reason")]
    if errors:
        return "error-event" if not any(r in ("stop", "length") for r in reasons) else "error-after-finish"
    if lines and lines[-1] == "data: [DONE]" and reasons and all(r in ("stop", "length") for r in reasons):
        return "complete"
    return "truncated"


def replica_process(app: str, deployment: str) -> psutil.Process:
    """The live Serve replica process of ``deployment`` (Ray titles it ``ray::ServeReplica:app:deployment``)."""
    title = f"ServeReplica:{app}:{deployment}"
    found = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and title in " ".join(p.info["cmdline"][:1])]
    assert len(found) == 1, f"expected one {title} process, found {len(found)}"
    return found[0]


def engine_core(app: str) -> Optional[psutil.Process]:
    """The engine core child of the app's model replica (fleetserve.engine.process.core_process)."""
    replica = replica_process(app, "model-tiny-llama")
    cores = [c for c in replica.children() if "fleetserve.engine.process.core_process" in " ".join(c.cmdline())]
    return cores[0] if cores else None
