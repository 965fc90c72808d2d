"""The shared fleet queue (``scope: cluster``): several ingress clients, one queue actor.

The actor class runs in this process here, reached through :class:`InProcessActor` (each
``method.remote(...)`` becomes a task or a finished future, as Ray's returns are awaitable);
tests/admission/test_cluster_queue_e2e.py runs it as a real Ray actor behind two ingress replicas.
"""

import asyncio
import threading
import time

import pytest

from fleetserve.clock import FakeClock
from fleetserve.errors import RateLimitError, ServiceUnavailableError
from fleetserve.admission.config import FleetSchedulingConfig
from fleetserve.admission.cluster_queue import (
    ClusterFleetScheduler,
    FleetQueueActor,
    SlotVerdict,
    idle_exit_due,
    queue_config_key,
    resolve_scope,
)
from fleetserve.admission.scheduler import FleetScheduler
from fleetserve.deployments.replica_stats import ReplicaStats
from fleetserve.router.stats_board import ReplicaStatsBoard, from_routing_stats
from tests.admission.factories import make_config
from tests.admission.test_scheduler import FakePool, wait_until

DEP = "model-m"


class InProcessActor:
    """``actor.method.remote(*args)`` on a local object; records every call."""

    def __init__(self, obj):
        self._obj = obj
        self.calls = []

    def __getattr__(self, name):
        fn = getattr(self._obj, name)
        outer = self

        class _Method:
            @staticmethod
            def remote(*args):
                outer.calls.append(name)
                if asyncio.iscoroutinefunction(fn):
                    return asyncio.ensure_future(fn(*args))
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(fn(*args))
                return fut

        return _Method


class RecordingObserver:
    def __init__(self):
        self.dispatched_calls, self.shed_calls, self.preempted_calls = [], [], []

    def dispatched(self, priority_class, waited_s):
        self.dispatched_calls.append((priority_class, waited_s))

    def shed(self, priority_class, status):
        self.shed_calls.append((priority_class, status))

    def preempted(self, priority_class):
        self.preempted_calls.append(priority_class)


def setup(n_clients=2, replicas=("r0",), **cfg):
    """One actor over a board with ``replicas``; ``n_clients`` ingress-side schedulers."""
    cfg.setdefault("queue_actor_idle_exit_s", None)  # no idle watch task outliving the test (tested on its own below)
    config = make_config(tick_s=0.01, **cfg)
    board = ReplicaStatsBoard()
    board.publish(DEP, from_routing_stats({r: {"num_running": 0, "num_waiting": 0} for r in replicas}))
    actor = InProcessActor(FleetQueueActor(config.model_dump(mode="json"), {"m": DEP}, None, board))
    clients = []
    for _ in range(n_clients):
        obs = RecordingObserver()
        local = FleetScheduler(config, FakePool(replicas), observer=obs)
        clients.append(ClusterFleetScheduler("m", lambda: actor, local, obs, board=ReplicaStatsBoard(), deployments=[DEP]))
    return actor, clients


def stats(actor):
    return actor._obj.stats()["m"]


async def test_slots_are_counted_across_ingress_clients():
    actor, (a, b) = setup(max_inflight_per_replica=2)
    await a.acquire("a1", "t", 1, 1.0, 5, 5)
    await b.acquire("b1", "t", 1, 1.0, 5, 5)
    waiting = asyncio.create_task(a.acquire("a2", "t", 1, 1.0, 5, 5))
    await wait_until(lambda: stats(actor)["queued"] == {1: 1})
    assert not waiting.done()  # a local queue on ingress a would have seen only one running request
    b.release("b1", 5)  # a slot freed by the *other* ingress lets it through
    slot = await asyncio.wait_for(waiting, 2)
    assert slot.request_id == "a2" and stats(actor)["running"] == 2 and stats(actor)["dispatched"] == 3


async def test_strict_priority_holds_across_ingress_clients():
    actor, (a, b) = setup(max_inflight_per_replica=1, preemption=False)
    await a.acquire("run", "bulk", 2, 1.0, 5, 5)
    batch = asyncio.create_task(a.acquire("batch", "bulk", 2, 1.0, 5, 5))
    await wait_until(lambda: stats(actor)["queued"] == {2: 1})
    premium = asyncio.create_task(b.acquire("prem", "vip", 0, 1.0, 5, 5))
    await wait_until(lambda: stats(actor)["queued"] == {0: 1, 2: 1})
    a.release("run", 5)
    await asyncio.wait_for(premium, 2)
    assert not batch.done()  # the earlier batch request on the other ingress still waits
    b.release("prem", 5)
    await asyncio.wait_for(batch, 2)


async def test_preemptions_in_the_actor_are_observed_once_on_the_ingress_that_gets_the_verdict():
    actor, (a, b) = setup(max_inflight_per_replica=1, preempt_via="engine")
    await a.acquire("batch", "bulk", 2, 1.0, 5, 5)
    slot = await asyncio.wait_for(b.acquire("prem", "vip", 0, 1.0, 5, 5), 2)  # takes the batch request's slot
    assert slot.request_id == "prem" and stats(actor)["preempted"] == 1
    assert b._observer.preempted_calls == [2]  # the preempted request's class, for fleet_preemptions_total
    a.release("batch", 5)
    b.release("prem", 5)
    await a.acquire("next", "bulk", 2, 1.0, 5, 5)  # the next verdict, to the other ingress
    assert a._observer.preempted_calls == []  # not exported twice: the verdict that carried it took it
    assert b._observer.preempted_calls == [2]


async def test_shed_verdicts_become_typed_errors_with_retry_after_and_are_observed():
    actor, (a, b) = setup(max_inflight_per_replica=1, max_queue_per_class=1, preemption=False)
    await a.acquire("run", "t", 2, 1.0, 5, 5)
    queued = asyncio.create_task(a.acquire("q", "t", 2, 1.0, 5, 5))
    await wait_until(lambda: stats(actor)["queued"] == {2: 1})
    with pytest.raises(RateLimitError) as err:  # the class queue is full fleet-wide, whichever ingress asks
        await b.acquire("over", "t", 2, 1.0, 5, 5)
    assert err.value.retry_after_s is not None and err.value.retry_after_s > 0
    assert b._observer.shed_calls == [(2, 429)]
    queued.cancel()


async def test_deadline_shed_is_a_503():
    actor, (a,) = setup(n_clients=1, max_inflight_per_replica=1, queue_timeout_s={2: 0.05}, preemption=False)
    await a.acquire("run", "t", 2, 1.0, 5, 5)
    with pytest.raises(ServiceUnavailableError):
        await asyncio.wait_for(a.acquire("late", "t", 2, 1.0, 5, 5), 10)


async def test_a_cancelled_waiter_leaves_the_shared_queue():
    actor, (a, b) = setup(max_inflight_per_replica=1)
    await a.acquire("run", "t", 1, 1.0, 5, 5)
    waiter = asyncio.create_task(b.acquire("gone", "t", 1, 1.0, 5, 5))
    await wait_until(lambda: stats(actor)["queued"] == {1: 1})
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await wait_until(lambda: stats(actor)["queued"] == {})
    a.release("run", 5)
    await wait_until(lambda: stats(actor)["running"] == 0)


async def test_dispatch_is_observed_on_the_ingress_with_its_wait():
    actor, (a,) = setup(n_clients=1)
    await a.acquire("x", "t", 0, 1.0, 5, 5)
    assert [c for c, _ in a._observer.dispatched_calls] == [0]


async def test_pushed_replica_stats_reach_the_actor_pool():
    actor, (a,) = setup(n_clients=1, replicas=("r0",), max_inflight_per_replica=1)
    a._board.publish(DEP, from_routing_stats({"r0": {}, "r1": {}}))  # this ingress's router now sees a second replica
    await a.acquire("x", "t", 1, 1.0, 5, 5)  # first call pushes the board
    y = await asyncio.wait_for(a.acquire("y", "t", 1, 1.0, 5, 5), 2)  # room on r1
    assert y.replica_hint == "r1"
    a._board.publish(DEP, from_routing_stats({}))  # an empty push never erases known replicas
    a._last_push = float("-inf")
    z = asyncio.create_task(a.acquire("z", "t", 1, 1.0, 5, 5))
    await wait_until(lambda: stats(actor)["queued"] == {1: 1})
    a.release("x", 1)
    await asyncio.wait_for(z, 2)


class DeadActor:
    def __getattr__(self, name):
        class _M:
            @staticmethod
            def remote(*args):
                fut = asyncio.get_running_loop().create_future()
                fut.set_exception(RuntimeError("actor died"))
                return fut

        return _M


async def test_unreachable_actor_falls_back_to_the_local_queue_after_one_retry():
    made = []
    config = make_config(tick_s=0.01, max_inflight_per_replica=1)
    local = FleetScheduler(config, FakePool())

    def factory():
        made.append(1)
        return DeadActor()

    c = ClusterFleetScheduler("m", factory, local, board=ReplicaStatsBoard(), deployments=[DEP])
    slot = await c.acquire("a", "t", 1, 1.0, 5, 5)
    assert slot.request_id == "a" and len(made) == 2 and c.fallbacks == 1
    assert [r.request_id for r in local.running()] == ["a"]
    c.release("a", 3)  # released where it was admitted
    assert local.running() == []


async def test_replica_stats_ride_along_at_most_once_per_push_interval():
    clock, pushed = FakeClock(), []
    board = ReplicaStatsBoard()
    board.publish(DEP, from_routing_stats({"r0": {"num_running": 1}}))
    row = {DEP: {"r0": ReplicaStats("r0", num_running=1).to_dict()}}

    class RowsActor:
        async def acquire(self, model, request_id, tenant_id, priority_class, weight, prompt_tokens, max_tokens, rows):
            pushed.append(rows)
            return SlotVerdict("r0", 0.0, {})

    actor = InProcessActor(RowsActor())
    c = ClusterFleetScheduler("m", lambda: actor, FleetScheduler(make_config(), FakePool()), board=board,
                              deployments=[DEP], push_interval_s=0.5, clock=clock)
    await c.acquire("a", "t", 1, 1.0, 5, 5)
    clock.advance(0.4)
    await c.acquire("b", "t", 1, 1.0, 5, 5)
    clock.advance(0.1)
    await c.acquire("c", "t", 1, 1.0, 5, 5)
    assert pushed == [row, None, row]


def test_scope_auto_is_cluster_only_with_several_ingress_replicas():
    assert resolve_scope(FleetSchedulingConfig(), 1) == "ingress"
    assert resolve_scope(FleetSchedulingConfig(), 2) == "cluster"
    assert resolve_scope(FleetSchedulingConfig(scope="ingress"), 3) == "ingress"
    assert resolve_scope(FleetSchedulingConfig(scope="cluster"), 1) == "cluster"


def test_idle_exit_only_with_nothing_queued_or_admitted_after_the_idle_time():
    assert idle_exit_due(now=700, last_call_at=100, queued=0, admitted=0, idle_exit_s=600)
    assert not idle_exit_due(now=699, last_call_at=100, queued=0, admitted=0, idle_exit_s=600)
    assert not idle_exit_due(now=10_000, last_call_at=100, queued=1, admitted=0, idle_exit_s=600)
    assert not idle_exit_due(now=10_000, last_call_at=100, queued=0, admitted=1, idle_exit_s=600)  # a long stream
    assert not idle_exit_due(now=10_000, last_call_at=100, queued=0, admitted=0, idle_exit_s=None)


async def test_the_actor_exits_when_idle_but_not_while_a_request_it_admitted_runs():
    clock, exits = FakeClock(1000.0), []
    config = make_config(tick_s=0.01, queue_actor_idle_exit_s=0.04)  # the watch polls every 10 ms (real time)
    board = ReplicaStatsBoard()
    board.publish(DEP, from_routing_stats({"r0": {}}))
    obj = FleetQueueActor(config.model_dump(mode="json"), {"m": DEP}, None, board, clock=clock, exit_fn=lambda: exits.append(1))
    actor = InProcessActor(obj)
    client = ClusterFleetScheduler("m", lambda: actor, FleetScheduler(config, FakePool()), board=ReplicaStatsBoard(),
                                   deployments=[DEP])
    await client.acquire("long", "t", 1, 1.0, 5, 5)
    clock.advance(3600)  # an hour-long stream: no call meanwhile
    assert not obj.idle_exit_due_now()  # it still counts a slot; exiting would forget it
    client.release("long", 5)  # a call: the idle time starts again
    assert not obj.idle_exit_due_now()
    clock.advance(0.05)
    assert obj.idle_exit_due_now()
    await wait_until(lambda: exits == [1])  # the watch task (started by the first call) acts on it


def test_the_actor_name_key_follows_the_scheduling_config_and_models():
    base = make_config()
    assert queue_config_key(base, {"m": DEP}) == queue_config_key(make_config(), {"m": DEP})
    assert queue_config_key(base, {"m": DEP}) != queue_config_key(make_config(max_inflight_per_replica=3), {"m": DEP})
    assert queue_config_key(base, {"m": DEP}) != queue_config_key(base, {"m": DEP, "n": "model-n"})


async def test_the_actor_is_looked_up_off_the_event_loop_and_once_for_concurrent_requests():
    actor, _ = setup(n_clients=0, max_inflight_per_replica=2)
    made_on = []

    def factory():  # stands in for get_or_create_queue_actor: a blocking call to Ray's GCS
        made_on.append(threading.get_ident())
        time.sleep(0.05)
        return actor

    c = ClusterFleetScheduler("m", factory, FleetScheduler(make_config(), FakePool()), board=ReplicaStatsBoard(),
                              deployments=[DEP])
    slots = await asyncio.gather(c.acquire("a", "t", 1, 1.0, 5, 5), c.acquire("b", "t", 1, 1.0, 5, 5))
    assert [s.request_id for s in slots] == ["a", "b"] and c.fallbacks == 0
    assert len(made_on) == 1 and made_on[0] != threading.get_ident()
