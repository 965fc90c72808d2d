"""End to end on real Ray Serve with the scaling controller on: a model version deployed at
runtime (its own Serve application, through the admin REST API) becomes a full fleet of the
controller, like the stable version: ``fleetserve scale MODEL --version v2`` sets its replica
count; ``--warm 1`` parks a standby (Serve runs two replicas, the controller shows one
serving and one standby) which a burst wakes; and a pinned drain of one of its replicas
during streams (through the ingress's replica links) migrates them with identical text."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.fixtures.ray_serve import TEST_ADMIN_KEY, TEST_API_KEY, wait_for
from tests.fixtures.scaling_app import ADMIN, deployed, scaling_config

pytestmark = pytest.mark.ray

APP, PREFIX = "fs-vscale", "/vscale"


@pytest.fixture(scope="module")
def version_app(serve_app):
    cfg = scaling_config(serve_app, APP, PREFIX, model={
        "engine_args": {"num_kv_blocks": 512, "max_num_seqs": 8, "num_threads": 1, "engine_process": False},
        "resources": {"num_cpus": 0.1}, "max_ongoing_requests": 32, "drain_timeout_s": 10, "drain_mode": "migrate",
        "replicas": {"num": 1, "min": 1, "max": 2}}, defaults={
        "scaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_per_replica": 2,
                    "downscale_delay_s": 1, "downscale_cooldown_s": 1}})
    with deployed(serve_app, cfg) as base:
        yield base, cfg


def running_replicas(app: str, deployment: str) -> int:
    """The version's model replicas Serve runs (its application also has a zero-CPU ingress)."""
    from ray import serve

    a = serve.status().applications.get(app)
    d = a.deployments.get(deployment) if a is not None else None
    return 0 if d is None else d.replica_states.get("RUNNING", 0)


def test_the_controller_sets_a_runtime_versions_replica_count(version_app, serve_app):
    from fleetserve.application.versions import ServeVersionDeployer

    base, cfg = version_app
    model, admin = serve_app.model, httpx.Client(base_url=base, headers=ADMIN, timeout=60)
    r = admin.post(f"/admin/models/{model}/versions", json={"version_id": "v2", "checkpoint": serve_app.checkpoint})
    assert r.status_code == 201, r.text
    app, dep = ServeVersionDeployer(cfg).app_name(model, "v2"), ServeVersionDeployer(cfg).deployment(model, "v2")
    wait_for(lambda: running_replicas(app, dep) == 1, 300, "v2's application to run one replica", interval_s=1.0)
    fleets = lambda: admin.get("/admin/scaling").json()["fleets"]  # noqa: E731
    wait_for(lambda: len(fleets().get(f"{model}@v2", {}).get("serving", [])) == 1, 60,
             "the controller to plan v2 as a fleet", interval_s=1.0)

    assert admin.post(f"/admin/scaling/{model}", json={"version": "v2", "min_replicas": 2}).status_code == 200
    wait_for(lambda: running_replicas(app, dep) == 2, 300, "the controller's count to start a second v2 replica",
             interval_s=1.0)
    wait_for(lambda: len(fleets()[f"{model}@v2"]["serving"]) == 2, 60, "both v2 replicas serving", interval_s=1.0)

    assert admin.post(f"/admin/scaling/{model}",
                      json={"version": "v2", "min_replicas": 1, "max_replicas": 1}).status_code == 200
    wait_for(lambda: running_replicas(app, dep) == 1, 180, "the controller's count to stop one v2 replica", interval_s=1.0)


class Settled:
    """A predicate for ``wait_for``: ``shape()`` (None while not there) has returned the same
    value for ``hold_s``, so a state the controller passes through on its way is not taken
    for the one it settles in."""

    def __init__(self, shape, hold_s: float = 5.0):
        self._shape, self._hold_s = shape, hold_s
        self.shape, self._since = None, 0.0

    def __call__(self) -> bool:
        shape, now = self._shape(), time.monotonic()
        if shape is None or shape != self.shape:
            self.shape, self._since = shape, now
        return shape is not None and now - self._since >= self._hold_s


PIN = {"x-fleetserve-version": "v2", "x-fleetserve-admin-key": TEST_ADMIN_KEY}  # pinned to v2 (admin may pin)


class Streams:
    """``n`` concurrent streaming completions pinned to v2 (even: greedy, odd: seeded sampling)."""

    def __init__(self, base: str, model: str, n: int, max_tokens: int):
        from openai import OpenAI

        self.client = OpenAI(base_url=base + "/v1", api_key=TEST_API_KEY, max_retries=0, timeout=300,
                             default_headers=PIN)
        self.model, self.max_tokens = model, max_tokens
        self.texts: dict[int, str] = {}
        self.errors: dict[int, str] = {}
        self.started, self.finished_at = set(), {}
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        extra = {"ignore_eos": True} | ({"seed": 500 + i} if i % 2 else {})
        try:
            stream = self.client.completions.create(model=self.model, prompt=f"def v2_task_{i}(x):\n    ", stream=True,
                                                    max_tokens=self.max_tokens, temperature=i % 2, extra_body=extra)
            parts = []
            for chunk in stream:
                self.started.add(i)
                if chunk.choices:
                    parts.append(chunk.choices[0].text)
            self.texts[i] = "".join(parts)
            self.finished_at[i] = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - asserted by the test
            self.errors[i] = repr(exc)

    def join(self) -> "Streams":
        for t in self.threads:
            t.join(300)
        assert not any(t.is_alive() for t in self.threads), "streams did not finish in time"
        assert not self.errors, self.errors
        return self


def test_a_runtime_version_gets_a_warm_standby_woken_by_a_burst_and_a_drain_migrates_its_streams(version_app,
                                                                                                   serve_app):
    from fleetserve.application.versions import ServeVersionDeployer

    base, cfg = version_app
    model, admin = serve_app.model, httpx.Client(base_url=base, headers=ADMIN, timeout=60)
    key = f"{model}@v2"
    app, dep = ServeVersionDeployer(cfg).app_name(model, "v2"), ServeVersionDeployer(cfg).deployment(model, "v2")
    fleet = lambda: admin.get("/admin/scaling").json()["fleets"][key]  # noqa: E731
    if admin.get(f"/admin/models/{model}/versions").json().get("versions", []) == []:  # run alone
        assert admin.post(f"/admin/models/{model}/versions",
                          json={"version_id": "v2", "checkpoint": serve_app.checkpoint}).status_code == 201

    # fleetserve scale MODEL --version v2 --min 1 --max 2 --warm 1
    assert admin.post(f"/admin/scaling/{model}",
                      json={"version": "v2", "min_replicas": 1, "max_replicas": 2, "warm": 1}).status_code == 200
    one_and_one = Settled(lambda: (lambda f: (tuple(f["serving"]), tuple(f["standby"]))
                                   if (len(f["serving"]), len(f["standby"]), f["pending"], f["draining"]) == (1, 1, [], {})
                                   and running_replicas(app, dep) == 2 else None)(fleet()))
    # Serve runs the standby: a loaded replica, parked. (Serve may first stop another replica
    # than the one the last scale-down picked; the controller gives it that one's role.)
    wait_for(one_and_one, 300, "one serving v2 replica and one parked standby, two running in Serve", interval_s=1.0)
    standby = one_and_one.shape[1][0]
    one = Streams(base, model, 1, 4).join()  # the ingress's first v2 request starts its router there
    assert len(one.texts) == 1
    wait_for(lambda: any(r["replica"] == standby and r["state"] == "standby" and r["version"] == "v2"
                         for r in admin.get("/admin/replicas").json()["replicas"]), 60,
             "the ingress to see v2's standby on its stats board", interval_s=0.5)

    # 600 tokens: the burst shows in several stats pushes (about one a second); at 200 it lasted
    # about one, and the controller missed it in 1 run of 12.
    burst = Streams(base, model, 8, 600)
    wait_for(lambda: standby in fleet()["serving"], 120, "the burst to wake v2's standby", interval_s=0.5)
    burst.join()
    assert all(len(t) > 0 for t in burst.texts.values()) and len(burst.texts) == 8

    # Two serving v2 replicas, no pool: then a reference run, and the same run with a drain.
    assert admin.post(f"/admin/scaling/{model}",
                      json={"version": "v2", "min_replicas": 2, "max_replicas": 2, "warm": 0}).status_code == 200
    wait_for(Settled(lambda: (lambda f: tuple(f["serving"]) if len(f["serving"]) == 2 and not f["standby"]
                              and not f["draining"] and not f["pending"] and running_replicas(app, dep) == 2
                              else None)(fleet())), 300,
             "two serving v2 replicas, nothing else running or starting", interval_s=1.0)
    # Long enough streams (600 tokens) that the busy replica still has some when the drain
    # lands: at 300 its four could all end between the last first chunk and the drain.
    reference = Streams(base, model, 8, 600).join().texts
    rows = lambda: [r for r in admin.get("/admin/replicas").json()["replicas"] if r["version"] == "v2"]  # noqa: E731
    sent_before = {r["replica"]: r["link_streams"] for r in rows()}
    run = Streams(base, model, 8, 600)
    wait_for(lambda: len(run.started) == 8, 120, "every stream's first chunk", interval_s=0.05)
    # All eight at once: the fleet admission counts v2's replicas as the model's capacity (it
    # used to count the stable deployment's 8 slots only, 7 for this standard tenant, so the
    # eighth stream waited for one to end).
    assert not run.finished_at, "a stream ended before the last one started"
    # The ingress's own count of streams it sent over each link: exact at once, unlike the stats.
    busy = max(rows(), key=lambda r: r["link_streams"] - sent_before.get(r["replica"], 0))
    assert busy["link_streams"] - sent_before.get(busy["replica"], 0) >= 4, (sent_before, rows())
    at = time.monotonic()
    r = admin.post(f"/admin/replicas/{busy['replica']}/drain", params={"mode": "migrate"})
    assert r.status_code == 202 and r.json()["applied"], r.text
    run.join()
    assert any(t > at for t in run.finished_at.values()), "the drain landed after every stream had finished"
    assert r.json()["migrated"] > 0, r.json()
    assert [i for i in range(8) if run.texts[i] != reference[i]] == []  # no token lost, repeated or changed
    assert all(r["transport"] == "link" for r in rows()) and sum(r["link_streams"] for r in rows()) >= 16, rows()
    assert admin.post(f"/admin/replicas/{busy['replica']}/resume").status_code == 200
