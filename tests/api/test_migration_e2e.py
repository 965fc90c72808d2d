"""No token lost on a drain or a replica's death (issue 23, items 4 and 5), end to end.

A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): the head, and a
worker node playing spot capacity (custom resource ``spot``, label ``fleetserve/capacity``).
Each node has room for one replica (1 CPU each; a replica takes 1), so the model's two
replicas land one per node. Through REST with the official ``openai`` client, 32 concurrent
streams -- half greedy, half seeded sampling at temperature 1 -- are run once without
interruption for reference, then:

- the spot node is drained through the admin API mid-stream (drain mode ``migrate``): the
  drained replica hands its in-flight requests back and the ingress resumes them on the
  other replica; 32 of 32 complete, each text equal to its reference;
- the spot node's replica process is SIGKILLed mid-stream: the ingress resumes each broken
  stream on the surviving replica; again 32 of 32 identical.

The cluster is this module's own, so it needs a process where Ray is not yet initialized:
run it alone (``flock /tmp/fleetserve-ray.lock pytest -m ray tests/api/test_migration_e2e.py``).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.fixtures.ray_serve import TEST_ADMIN_KEY, TEST_API_KEY, TEST_MODEL, free_port, make_fleet_config, wait_for
from tests.fixtures.two_node_cluster import stream_resumes, two_node_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

N_STREAMS = 32
MAX_TOKENS = 160  # long enough that every stream is mid-flight when the interruption lands
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


class Fleet:
    def __init__(self, base_url: str, spot_node: str, cluster, app: str, model_cfg):
        self.base_url, self.spot_node, self.cluster = base_url, spot_node, cluster
        self.app, self.model_cfg = app, model_cfg

    def replicas(self) -> list[dict]:
        (model,) = httpx.get(self.base_url + "/admin/status", headers=ADMIN, timeout=30).json()["models"]
        return model["replicas"]

    def spot_row(self) -> dict:
        (row,) = [r for r in self.replicas() if r["node_id"] == self.spot_node]
        return row

    def resumes(self, reason: str) -> float:
        return stream_resumes(self.base_url, reason)


@pytest.fixture(scope="module")
def fleet(tiny_llama_path):
    from fleetserve.application.build import deploy
    from fleetserve.config import ReplicasConfig

    with two_node_cluster(num_cpus=1) as (cluster, spot_node):
        http_port, grpc_port = free_port(), free_port()
        cfg = make_fleet_config(str(tiny_llama_path), http_port, grpc_port)
        cfg.models[0] = cfg.models[0].model_copy(update={"replicas": ReplicasConfig(num=2), "drain_mode": "migrate"})
        deploy(cfg)
        f = Fleet(f"http://127.0.0.1:{http_port}", spot_node, cluster, cfg.server.app_name, cfg.models[0])
        wait_for(lambda: len({r["node_id"] for r in f.replicas() if r["transport"] == "link"}) == 2, 240,
                 "two replicas, one per node, advertising links")
        assert spot_node in {r["node_id"] for r in f.replicas()}, (spot_node, f.replicas())
        wait_for(lambda: _complete("ready?", 0, None, f.base_url, 1), 120, "a completion")
        yield f


def _prompt(i: int) -> str:
    return f"def task_{i}(items, limit={i}):\n    "


def _sampling(i: int) -> tuple[float, int | None]:
    return (0.0, None) if i % 2 == 0 else (1.0, 1000 + i)


def _complete(prompt, temperature, seed, base_url, max_tokens) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key=TEST_API_KEY, max_retries=0, timeout=300)
    extra = {"ignore_eos": True} | ({"seed": seed} if seed is not None else {})
    r = client.completions.create(model=TEST_MODEL, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                                  extra_body=extra)
    return r.choices[0].text


class Streams:
    """32 concurrent streaming completions in threads; ``started`` counts streams that got a chunk."""

    def __init__(self, base_url: str):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url + "/v1", api_key=TEST_API_KEY, max_retries=0, timeout=300)
        self.texts: dict[int, str] = {}
        self.usage: dict[int, int] = {}
        self.errors: dict[int, BaseException] = {}
        self.started = 0
        self.finished_at: dict[int, float] = {}
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(N_STREAMS)]

    def _run(self, i: int) -> None:
        temperature, seed = _sampling(i)
        extra = {"ignore_eos": True} | ({"seed": seed} if seed is not None else {})
        try:
            stream = self.client.completions.create(
                model=TEST_MODEL, prompt=_prompt(i), max_tokens=MAX_TOKENS, temperature=temperature, stream=True,
                stream_options={"include_usage": True}, extra_body=extra)
            parts, first = [], True
            for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].text)
                    assert chunk.choices[0].finish_reason in (None, "length"), chunk
                if chunk.usage is not None:
                    self.usage[i] = chunk.usage.completion_tokens
                if first:
                    first = False
                    with self._lock:
                        self.started += 1
            self.texts[i] = "".join(parts)
            self.finished_at[i] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors[i] = exc

    def start(self) -> "Streams":
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "streams did not finish in time"


@pytest.fixture(scope="module")
def reference(fleet) -> dict[int, str]:
    s = Streams(fleet.base_url).start()
    s.join()
    assert not s.errors, s.errors
    assert all(s.usage[i] == MAX_TOKENS for i in range(N_STREAMS))
    return s.texts


def _interrupt_mid_stream(fleet: Fleet, reference: dict[int, str], interrupt) -> Streams:
    """Start the 32 streams, wait until all have output and the spot replica is busy, call
    ``interrupt``; then every stream must complete with its reference text."""
    s = Streams(fleet.base_url).start()
    wait_for(lambda: s.started == N_STREAMS, 120, "every stream's first chunk", interval_s=0.05)
    wait_for(lambda: fleet.spot_row()["running"] + fleet.spot_row()["waiting"] > 0, 30,
             "the spot replica to report requests in flight", interval_s=0.05)
    at = time.monotonic()
    interrupt()
    s.join()
    assert not s.errors, {i: repr(e) for i, e in s.errors.items()}
    assert any(t > at for t in s.finished_at.values()), "the interruption landed after every stream had finished"
    diff = [i for i in range(N_STREAMS) if s.texts[i] != reference[i]]
    assert diff == [], f"texts differ from the uninterrupted run for streams {diff}"
    assert all(s.usage[i] == MAX_TOKENS for i in range(N_STREAMS)), s.usage  # each token counted once
    return s


def test_spot_node_drain_migrates_every_stream_without_changing_a_token(fleet, reference):
    before = fleet.resumes("migrated")
    acks: list[dict] = []

    def drain():
        r = httpx.post(f"{fleet.base_url}/admin/nodes/{fleet.spot_node}/drain", headers=ADMIN,
                       json={"source": "test", "reason": "spot interruption"}, timeout=30)
        assert r.status_code == 202, r.text
        acks.extend(r.json()["replicas"])

    try:
        _interrupt_mid_stream(fleet, reference, drain)
        (ack,) = acks
        assert ack["applied"] and ack["migrated"] > 0, ack  # the drained replica had streams to hand back
        assert fleet.resumes("migrated") - before >= ack["migrated"]
    finally:
        for row in fleet.replicas():
            httpx.post(f"{fleet.base_url}/admin/replicas/{row['replica']}/resume", headers=ADMIN, timeout=30)
    wait_for(lambda: not fleet.spot_row()["draining"], 30, "the spot replica to take requests again")


def test_replica_killed_mid_stream_every_stream_resumes_identically(fleet, reference):
    from ray._private.state import actors  # the GCS's actor table: no dashboard needed

    from fleetserve.application.build import deployment_name

    cfg_name = f"ServeReplica:{fleet.app}:{deployment_name(fleet.model_cfg)}"
    victims = [a for a in actors().values() if a["State"] == "ALIVE" and a["ActorClassName"] == cfg_name
               and a["Address"]["NodeID"] == fleet.spot_node]
    assert len(victims) == 1, (cfg_name, [(a["ActorClassName"], a["Address"]["NodeID"]) for a in actors().values()])
    before = fleet.resumes("lost")
    _interrupt_mid_stream(fleet, reference, lambda: os.kill(victims[0]["Pid"], signal.SIGKILL))
    assert fleet.resumes("lost") - before >= 1  # streams really broke and were resumed
