"""The spot twin serves traffic, and Ray's own node drain migrates its streams (issue 23).

A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): the head is
on-demand (resource ``on_demand``), the worker spot (resource ``spot``). The whole app is
deployed as ``fleetserve serve`` does it, with the scaling controller on and spot enabled:
the controller keeps one on-demand replica and bursts a second onto the spot twin
deployment. Through REST with the official ``openai`` client:

- requests are served by both replicas, the one on the spot node included (the ingress
  ranks both deployments' replicas as one pool);
- the spot node is drained through Ray's GCS (``DrainNode``, reason preemption, as
  ``ray drain-node`` and autoscaler v2 do) while 16 streams run: the controller sees the
  draining node, drains its replica in migrate mode, every stream completes with the text of
  an uninterrupted run, and the replacement replica comes up on on-demand capacity.

Needs its own Ray cluster: runs through tests/test_own_cluster.py (or alone:
``flock /tmp/fleetserve-ray.lock pytest -m "ray and slow" tests/application/test_spot_routing_e2e.py``).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.fixtures.ray_serve import TEST_ADMIN_KEY, TEST_API_KEY, free_port, wait_for
from tests.fixtures.two_node_cluster import stream_resumes, two_node_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODEL = "tiny"
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
N_STREAMS, MAX_TOKENS = 16, 160


@pytest.fixture(scope="module")
def app(tiny_llama_path):
    from fleetserve.application.build import deploy
    from fleetserve.config import parse_config
    from fleetserve.tenants.keys import hash_api_key

    port = free_port()
    cfg = parse_config({
        "server": {"host": "127.0.0.1", "port": port, "grpc_port": None, "app_name": "spotroute",
                   "admin_key": TEST_ADMIN_KEY},
        "metrics": {"port": 0},
        "models": [{"name": MODEL, "checkpoint": str(tiny_llama_path), "drain_mode": "migrate",
                    "engine_args": {"num_kv_blocks": 256, "max_num_seqs": 32, "num_threads": 1, "engine_process": False},
                    "resources": {"num_cpus": 0.25}, "max_ongoing_requests": 64, "drain_timeout_s": 30}],
        "tenants": {"tenants": [{"id": "test", "tier": "standard", "api_key_hashes": [hash_api_key(TEST_API_KEY)]}]},
        "autoscaler": {"controller": True, "tick_interval_s": 0.5,
                       "placement": {"on_demand_resource": "on_demand"},
                       "defaults": {"scaling": {"min_replicas": 2, "max_replicas": 2, "downscale_delay_s": 600},
                                    "spot": {"enabled": True, "on_demand_base": 1, "max_spot_share": 0.5}}},
    })
    with two_node_cluster(num_cpus=2, head_resources={"on_demand": 100}, spot_units=100) as (cluster, spot_node):
        deploy(cfg)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: {r["node_id"] == spot_node for r in rows(base) if r["transport"] == "link"} == {True, False},
                 300, "a linked replica on each node")
        yield base, cluster, spot_node


def rows(base: str) -> list[dict]:
    models = httpx.get(base + "/admin/status", headers=ADMIN, timeout=30).json()["models"]
    return [r for m in models for r in m["replicas"]]


class Streams:
    """Concurrent streaming completions (half greedy, half seeded at temperature 1) in threads."""

    def __init__(self, base: str):
        from openai import OpenAI

        self.client = OpenAI(base_url=base + "/v1", api_key=TEST_API_KEY, max_retries=0, timeout=300)
        self.texts: dict[int, str] = {}
        self.errors: dict[int, BaseException] = {}
        self.started = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(N_STREAMS)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        extra = {"ignore_eos": True} | ({"seed": 500 + i} if i % 2 else {})
        try:
            stream = self.client.completions.create(model=MODEL, prompt=f"class Task{i}:\n    ", max_tokens=MAX_TOKENS,
                                                    temperature=float(i % 2), stream=True, extra_body=extra)
            parts = []
            for chunk in stream:
                if chunk.choices:
                    if not parts:
                        with self._lock:
                            self.started += 1
                    parts.append(chunk.choices[0].text)
                    assert chunk.choices[0].finish_reason in (None, "length"), chunk
            self.texts[i] = "".join(parts)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors[i] = exc

    def join(self) -> "Streams":
        for t in self.threads:
            t.join(600)
        assert not any(t.is_alive() for t in self.threads), "streams did not finish in time"
        assert not self.errors, {i: repr(e) for i, e in self.errors.items()}
        return self


def test_requests_are_served_by_the_replica_on_the_spot_node(app):
    base, _, spot_node = app
    before = {r["replica"]: r["link_streams"] for r in rows(base)}
    Streams(base).join()
    after = {r["replica"]: (r["link_streams"], r["node_id"]) for r in rows(base)}
    served = {node == spot_node for rid, (n, node) in after.items() if n > before.get(rid, 0)}
    assert served == {True, False}, after  # both deployments took requests


def test_a_ray_node_drain_migrates_every_stream_and_replaces_the_spot_replica(app):
    import ray
    from ray.core.generated import autoscaler_pb2

    base, cluster, spot_node = app
    reference = Streams(base).join().texts
    before = stream_resumes(base, "migrated")
    s = Streams(base)
    wait_for(lambda: s.started == N_STREAMS, 120, "every stream's first chunk", interval_s=0.05)
    wait_for(lambda: any(r["node_id"] == spot_node and r["running"] > 0 for r in rows(base)), 30,
             "the spot replica to run requests", interval_s=0.05)
    gcs = ray._raylet.GcsClient(address=cluster.gcs_address)
    accepted, why = gcs.drain_node(spot_node, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                                   "test: spot preemption", int((time.time() + 120) * 1000))
    assert accepted, why
    texts = s.join().texts
    assert [i for i in range(N_STREAMS) if texts[i] != reference[i]] == []  # no token lost, repeated or changed
    assert stream_resumes(base, "migrated") > before  # the drained replica handed streams back
    wait_for(lambda: len([r for r in rows(base) if r["node_id"] != spot_node and not r["draining"]]) == 2, 240,
             "the replacement replica on on-demand capacity")
