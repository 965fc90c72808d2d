"""Guarded rollouts end to end: real Ray Serve on loopback, a real redis-server as the canary
store, the official openai client for user traffic and the admin REST API for rollouts.

One application (``/ro`` next to the session app) serves every case, in order: a corrupt
checkpoint is blocked before any traffic; a canary failing half its requests is rolled back
within the guard budget; a healthy canary is promoted through every step with no failed
request; killing the ingress mid-rollout resumes at the same step, and the old (runtime)
stable version's deployment is deleted with no failed request.

Canary versions are the tiny checkpoint with seeded noise on the weights, so greedy outputs
differ. Latency margins are wide here (2 shared cores: p95s swing with the neighbours' load);
the error-rate guardrail is the one under test.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.canary.test_versions_e2e import perturbed_copy
from tests.fixtures.ray_serve import TEST_ADMIN_KEY, TEST_API_KEY, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.slow]

APP = "fleetserve-rollout-test"
PREFIX = "/ro"
STEPS = [10, 25, 50, 100]
MIN_SAMPLE = 6
# Failed requests a rolled-back canary may cause: those of its first verdict's sample, plus
# what it gets while the rollback reaches every ingress (docs/rollouts.md, "guard budget").
FAIL_FRACTION = 0.5
GUARD_BUDGET = 12


def rollout_config(serve_app, redis_url: str):
    from fleetserve.config import parse_config
    from fleetserve.tenants.keys import hash_api_key

    return parse_config({
        "server": {"host": "127.0.0.1", "port": int(serve_app.base_url.rsplit(":", 1)[1]), "grpc_port": None,
                   "app_name": APP, "route_prefix": PREFIX, "admin_key": TEST_ADMIN_KEY},
        "models": [{"name": serve_app.model, "checkpoint": serve_app.checkpoint,
                    "engine_args": {"num_kv_blocks": 256, "max_num_seqs": 16, "num_threads": 1},
                    "resources": {"num_cpus": 0}, "max_ongoing_requests": 64, "drain_timeout_s": 3}],
        "tenants": {"tenants": [{"id": "test", "tier": "standard", "api_key_hashes": [hash_api_key(TEST_API_KEY)]}]},
        "canary": {"enabled": True, "redis_url": redis_url, "steps": STEPS, "step_interval_s": 2,
                   "min_sample_per_step": MIN_SAMPLE, "warmup_requests": 2, "tick_s": 0.5, "lease_s": 3,
                   "registry_refresh_s": 0.5, "retire_delay_s": 2,
                   "guardrails": {"error_rate_margin": 0.05, "ttft_p95_margin": 4.0, "tpot_p95_margin": 4.0}},
    })


@pytest.fixture(scope="module")
def app(serve_app, redis_server):
    from ray import serve

    from fleetserve.application.build import deploy

    redis_server.flush()
    deploy(rollout_config(serve_app, redis_server.url), start=False)
    base = serve_app.base_url + PREFIX
    wait_for(lambda: complete(base).status_code == 200, 180, "the rollout test app to answer")
    yield base, serve_app
    for name in list(serve.status().applications):
        if name == APP or name.startswith(APP + "--"):
            serve.delete(name)


def complete(base: str) -> httpx.Response:
    return httpx.post(base + "/v1/completions", headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=60,
                      json={"model": "tiny-llama", "prompt": "ready?", "max_tokens": 1})


@pytest.fixture(scope="module")
def admin(app):
    base, _ = app
    return httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"})


class Traffic:
    """Completions from 3 threads, a new OpenAI ``user`` each, so the split's share applies."""

    def __init__(self, base: str, model: str):
        from openai import OpenAI

        self.client = OpenAI(base_url=base + "/v1", api_key=TEST_API_KEY, max_retries=0, timeout=60)
        self.model = model
        self.served: Counter[str] = Counter()
        self.failed, self.errors = 0, []
        self._stop, self._n, self._lock = threading.Event(), 0, threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(3)]

    def _run(self):
        while not self._stop.is_set():
            with self._lock:
                self._n += 1
                user = f"user-{self._n}"
            try:
                raw = self.client.completions.with_raw_response.create(
                    model=self.model, prompt="def add(a, b):", max_tokens=2, temperature=0, user=user)
                raw.parse()
                with self._lock:
                    self.served[raw.headers.get("x-fleetserve-version")] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with self._lock:
                    self.failed += 1
                    self.errors.append(repr(exc)[:200])

    @property
    def ok(self) -> int:
        return sum(self.served.values())

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def status(admin, model) -> dict:
    r = admin.get(f"/admin/models/{model}/rollout")
    assert r.status_code == 200, r.text
    return r.json()


def wait_phase(admin, model, phases, timeout_s=240.0) -> dict:
    out = {}

    def check():
        out.update(status(admin, model))
        return out["phase"] in phases

    wait_for(check, timeout_s, f"rollout phase in {phases}", interval_s=0.5)
    return out


def start(admin, model, version, checkpoint=None, **extra) -> dict:
    body = {"version": version, **({"checkpoint": checkpoint} if checkpoint else {}), **extra}
    r = admin.post(f"/admin/models/{model}/rollout", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_rollouts_end_to_end(app, admin, tmp_path_factory):
    base, serve_app = app
    model = serve_app.model
    root = tmp_path_factory.mktemp("rollouts")
    timings = {}

    # -- auth before the body; rollouts need a running rollout for commands ---------------
    r = httpx.post(base + f"/admin/models/{model}/rollout", content=b"{bad", timeout=30,
                   headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401, r.text
    assert admin.post(f"/admin/models/{model}/rollout", content=b"{bad").status_code == 400
    assert admin.post(f"/admin/models/{model}/rollout", json={"version": "x", "steps": [50, 10]}).status_code == 400
    assert admin.post(f"/admin/models/{model}/rollout", json={"version": "x"}).status_code == 404

    # -- (c) a corrupt checkpoint is blocked before any traffic -------------------------------
    t0 = time.monotonic()
    bad = Path(perturbed_copy(serve_app.checkpoint, root / "bad", seed=3))
    r = admin.post(f"/admin/models/{model}/versions", json={"version_id": "bad", "checkpoint": str(bad), "deploy": False})
    assert r.status_code == 201, r.text
    weights = next(bad.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with Traffic(base, model) as traffic:
        start(admin, model, "bad")
        st = wait_phase(admin, model, {"blocked", "rolled_back", "promoted"})
    assert st["phase"] == "blocked" and "checksum mismatch" in st["reason"], st["reason"]
    assert all(d["weights"].get("bad", 0) == 0 for d in st["decisions"])
    assert f"{model}@bad" not in traffic.served and traffic.failed == 0, (traffic.served, traffic.errors[:3])
    timings["blocked"] = time.monotonic() - t0

    # -- (b) a canary failing half its requests is rolled back within the guard budget ------
    t0 = time.monotonic()
    flaky = perturbed_copy(serve_app.checkpoint, root / "flaky", seed=4)
    with Traffic(base, model) as traffic:
        start(admin, model, "flaky", flaky, engine_args={"fail_fraction": FAIL_FRACTION, "fail_seed": 0})
        st = wait_phase(admin, model, {"blocked", "rolled_back", "promoted"})
        wait_for(lambda: status(admin, model)["weights"] == {"v1": 1.0}, 30, "the split back on v1")
    assert st["phase"] == "rolled_back" and "error_rate" in st["reason"], st
    rollback = st["decisions"][-1]
    assert rollback["event"] == "rollback" and rollback["canary"]["errors"] > 0
    assert 0 < traffic.failed <= GUARD_BUDGET, (traffic.failed, traffic.errors[:3])
    timings["rolled_back"] = time.monotonic() - t0
    timings["rollback_failed_requests"] = traffic.failed
    timings["rollback_canary_sample"] = rollback["canary"]
    print("rollback decision:", json.dumps(rollback))

    # -- (a) a healthy canary is promoted through every step, no request fails ----------------
    t0 = time.monotonic()
    good = perturbed_copy(serve_app.checkpoint, root / "good", seed=2)
    with Traffic(base, model) as traffic:
        start(admin, model, "good", good)
        st = wait_phase(admin, model, {"blocked", "rolled_back", "promoted"})
        assert st["phase"] == "promoted", st
        # every ingress has re-read the split once 30 more requests went to the promoted version
        good_at_promotion = traffic.served[f"{model}@good"]
        wait_for(lambda: traffic.served[f"{model}@good"] >= good_at_promotion + 30, 60, "requests on the promoted version")
        n_before, total = traffic.served[f"{model}@v1"], traffic.ok
        wait_for(lambda: traffic.ok >= total + 20, 60, "more requests after promotion")
    assert traffic.failed == 0, traffic.errors[:3]
    events = [d["event"] for d in st["decisions"]]
    assert events == ["start", "load", "warm", "health_check", "start_canary", "advance", "advance", "advance",
                      "promote"], events
    assert [d["step_index"] for d in st["decisions"] if d["event"] in ("start_canary", "advance")] == [0, 1, 2, 3]
    assert traffic.served[f"{model}@v1"] == n_before  # v1 retired: no new request after promotion
    timings["promoted"] = time.monotonic() - t0
    print("promotion decisions:", json.dumps(st["decisions"][-5:]))
    timings["promote_served"] = dict(traffic.served)
    print("rollout e2e timings and counts:", timings)


def test_killing_the_ingress_mid_rollout_resumes_at_the_same_step(app, admin, tmp_path_factory):
    """Runs after the promotion above: the stable version is then a runtime one, whose
    deployment this rollout's promotion deletes (drained) with traffic flowing."""
    base, serve_app = app
    model = serve_app.model
    root = tmp_path_factory.mktemp("rollouts-kill")
    timings = {}
    t0 = time.monotonic()
    newer = perturbed_copy(serve_app.checkpoint, root / "newer", seed=5)
    with Traffic(base, model) as traffic:
        start(admin, model, "newer", newer)
        wait_for(lambda: (status(admin, model)["step"] or {}).get("index", 0) >= 2, 240, "step 2 of the rollout")
    assert admin.post(f"/admin/models/{model}/rollout/pause").status_code == 200
    before = status(admin, model)
    kill_ingress()
    wait_for(lambda: complete(base).status_code == 200, 120, "the restarted ingress to answer")
    after = status(admin, model)
    assert (after["phase"], after["paused_from"], after["step"], after["since"]) == \
        (before["phase"], before["paused_from"], before["step"], before["since"])
    with Traffic(base, model) as traffic:
        assert admin.post(f"/admin/models/{model}/rollout/resume").status_code == 200
        st = wait_phase(admin, model, {"blocked", "rolled_back", "promoted"})
        assert st["phase"] == "promoted", st
        # the old stable was a runtime version ("good" after the test above): its application is
        # deleted (drained) while requests flow
        if st["stable"] != "v1":
            old_app = f"{APP}--{model}--{st['stable']}"
            wait_for(lambda: old_app not in serve_status_apps(), 60, "the old stable's deployment deleted")
        wait_for(lambda: traffic.served[f"{model}@newer"] >= 5, 60, "requests on the newest version")
    assert traffic.failed == 0, traffic.errors[:3]
    timings["killed_and_promoted"] = time.monotonic() - t0
    print("rollout e2e (kill) timings:", timings)


def serve_status_apps() -> set[str]:
    from ray import serve

    return set(serve.status().applications)


def kill_ingress() -> None:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{APP}#ingress#")]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

    def replaced() -> bool:
        now = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith(f"SERVE_REPLICA::{APP}#ingress#")]
        return len(now) == 1 and now[0] != names[0]

    wait_for(replaced, 120, "Serve to start a new ingress replica")
