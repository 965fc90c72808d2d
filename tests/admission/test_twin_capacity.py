"""A model's spot twin deployment serves its traffic too (the router ranks both), so its
replicas count as the model's admission capacity: in this ingress's queue and in the
cluster queue actor."""

import asyncio

from prometheus_client import CollectorRegistry

from fleetserve.admission.board_pool import UNKNOWN_REPLICA, board_pools
from fleetserve.admission.cluster_queue import (ClusterFleetScheduler, FleetQueueActor, cluster_scheduler_factory,
                                                queue_config_key)
from fleetserve.admission.queues import AdmissionRequest
from fleetserve.admission.scheduler import FleetScheduler
from fleetserve.application.wiring import build_admission
from fleetserve.config import parse_config
from fleetserve.router.stats_board import ReplicaStatsBoard, from_routing_stats
from tests.admission.factories import make_config
from tests.admission.test_cluster_queue import InProcessActor
from tests.admission.test_scheduler import FakePool, wait_until

DEP, TWIN = "model-m", "model-m--spot"


def publish(board, dep, *replicas):
    board.publish(dep, from_routing_stats({r: {"num_running": 0, "num_waiting": 0} for r in replicas}))


def test_capacity_is_the_on_demand_plus_the_twin_replicas():
    board = ReplicaStatsBoard()
    pool = board_pools({"m": DEP}, board=board, twins={"m": TWIN})["m"]
    assert [c.replica_id for c in pool.capacity_snapshot()] == [UNKNOWN_REPLICA]  # neither router reported yet
    publish(board, TWIN, "s0", "s1")  # only the twin's router reported: its replicas are known capacity
    assert [c.replica_id for c in pool.capacity_snapshot()] == ["s0", "s1"]
    publish(board, DEP, "d0")
    assert sorted(c.replica_id for c in pool.capacity_snapshot()) == ["d0", "s0", "s1"]
    publish(board, TWIN)  # spot gone: the on-demand base alone
    assert [c.replica_id for c in pool.capacity_snapshot()] == ["d0"]


def config(scope):
    return parse_config({
        "server": {"ingress_replicas": 2 if scope == "cluster" else 1},
        "models": [{"name": "m", "checkpoint": "/tmp/m"}],
        "tenants": {"scheduling": {"scope": scope, "max_inflight_per_replica": 1, "tick_s": 0.01}},
    })


def request(rid):
    return AdmissionRequest("m", rid, "t", priority=1, weight=1.0, prompt_tokens=5, max_tokens=5)


async def test_the_ingress_queue_admits_one_per_slot_on_both_deployments():
    board = ReplicaStatsBoard()
    publish(board, DEP, "d0")
    publish(board, TWIN, "s0", "s1")
    queues = build_admission(config("ingress"), CollectorRegistry(), {"m": DEP}, twins={"m": TWIN}, board=board)
    admitted = [await asyncio.wait_for(queues.admit(request(f"r{i}")), 2) for i in range(3)]
    assert sorted(a.slot.replica_hint for a in admitted) == ["d0", "s0", "s1"]
    fourth = asyncio.create_task(queues.admit(request("r3")))
    await asyncio.sleep(0.05)
    assert not fourth.done()  # three replicas, one slot each
    queues.release(admitted[1], 5)
    assert (await asyncio.wait_for(fourth, 2)).slot.replica_hint == admitted[1].slot.replica_hint


def test_the_cluster_queue_pushes_the_twin_and_is_named_after_it():
    sched = config("cluster").tenants.scheduling
    make = cluster_scheduler_factory("app", sched, {"m": DEP}, twins={"m": TWIN})
    client = make("m", FakePool(), None)  # the actor itself is made on first use only
    assert client._deployments == [DEP, TWIN]
    assert queue_config_key(sched, {"m": DEP}, {"m": TWIN}) != queue_config_key(sched, {"m": DEP})
    assert queue_config_key(sched, {"m": DEP}, {}) == queue_config_key(sched, {"m": DEP})  # old names unchanged


async def test_the_cluster_queue_actor_counts_the_pushed_twin_replicas():
    cfg = make_config(tick_s=0.01, max_inflight_per_replica=1, queue_actor_idle_exit_s=None)
    actor = InProcessActor(FleetQueueActor(cfg.model_dump(mode="json"), {"m": DEP}, None, ReplicaStatsBoard(),
                                           twins={"m": TWIN}))
    ingress_board = ReplicaStatsBoard()
    publish(ingress_board, DEP, "d0")
    publish(ingress_board, TWIN, "s0")
    client = ClusterFleetScheduler("m", lambda: actor, FleetScheduler(cfg, FakePool()), board=ingress_board,
                                   deployments=[DEP, TWIN])
    await one_slot_on_each(client, actor, ["d0", "s0"])


async def one_slot_on_each(client, actor, replicas):
    """One slot per replica (``max_inflight_per_replica`` 1): ``replicas`` take a request each,
    the next one waits in the actor's queue until a slot is released."""
    n = len(replicas)
    slots = [await asyncio.wait_for(client.acquire(f"r{i}", "t", 1, 1.0, 5, 5), 2) for i in range(n)]
    assert sorted(s.replica_hint for s in slots) == replicas
    waiting = asyncio.create_task(client.acquire(f"r{n}", "t", 1, 1.0, 5, 5))
    await wait_until(lambda: actor._obj.stats()["m"]["queued"] == {1: 1})
    client.release("r0", 5)
    assert (await asyncio.wait_for(waiting, 2)).replica_hint == slots[0].replica_hint
