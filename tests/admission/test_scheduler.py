"""The executor: queue waiters, dispatch on capacity, shed, preempt through the pool, cancel."""

import asyncio

import pytest

from fleetserve.errors import RateLimitError, ServiceUnavailableError
from fleetserve.admission.policy import ReplicaCapacity
from fleetserve.admission.scheduler import FleetScheduler
from tests.admission.factories import make_config


class FakePool:
    """Replicas whose capacity the test sets; records preempt calls."""

    def __init__(self, replicas=("r0",), preempt_ok=True):
        self.replicas = [ReplicaCapacity(r) for r in replicas]
        self.preempted = []
        self.preempt_ok = preempt_ok

    def capacity_snapshot(self):
        return self.replicas

    async def preempt(self, replica_id, request_id):
        self.preempted.append((replica_id, request_id))
        return self.preempt_ok


async def wait_until(cond, timeout_s=5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def sched(pool, **cfg):
    return FleetScheduler(make_config(tick_s=0.01, **cfg), pool)


async def test_dispatches_up_to_capacity_then_queues_and_releases():
    s = sched(FakePool(), max_inflight_per_replica=2)
    a = await s.acquire("a", "t", 1, 1.0, 5, 5)
    b = await s.acquire("b", "t", 1, 1.0, 5, 5)
    assert a.replica_hint == "r0" and b.replica_hint == "r0"
    c = asyncio.create_task(s.acquire("c", "t", 1, 1.0, 5, 5))
    await wait_until(lambda: s.queue_depths() == {1: 1})
    assert not c.done()
    s.release("a", 5)
    slot = await asyncio.wait_for(c, 2)
    assert slot.request_id == "c" and s.counters.dispatched == 3


@pytest.mark.parametrize("via", ["engine", "replica_call"])
async def test_higher_class_waiter_preempts_lower_class_and_takes_its_slot(via):
    pool = FakePool()
    s = sched(pool, max_inflight_per_replica=1, preempt_via=via)
    await s.acquire("batch", "b", 2, 1.0, 5, 5)
    premium = asyncio.create_task(s.acquire("prem", "p", 0, 1.0, 5, 5))
    slot = await asyncio.wait_for(premium, 2)
    # 'engine': no call, the engine's priority scheduler makes the room; 'replica_call': asked.
    assert pool.preempted == ([] if via == "engine" else [("r0", "batch")]) and slot.request_id == "prem"
    assert s.counters.preempted == 1
    assert {r.request_id: r.preempted for r in s.running()} == {"batch": True, "prem": False}
    s.release("batch", 3)  # the preempted request later finishes inside the engine
    s.release("prem", 3)
    assert s.running() == []


async def test_queue_full_rejects_with_429_and_deadline_sheds_with_503():
    pool = FakePool(replicas=())  # no capacity at all
    s = sched(pool, max_queue_per_class=1, queue_timeout_s={1: 0.05})
    waiter = asyncio.create_task(s.acquire("a", "t", 1, 1.0, 5, 5))
    await wait_until(lambda: s.queue_depths() == {1: 1})
    with pytest.raises(RateLimitError) as e:
        await s.acquire("b", "t", 1, 1.0, 5, 5)
    assert e.value.retry_after_s >= 1.0
    with pytest.raises(ServiceUnavailableError):
        await asyncio.wait_for(waiter, 2)
    assert s.counters.shed_429 == 1 and s.counters.shed_503 == 1 and s.queue_depths() == {}


async def test_cancelled_waiter_leaves_the_queue():
    s = sched(FakePool(replicas=()))
    t = asyncio.create_task(s.acquire("a", "t", 1, 1.0, 5, 5))
    await wait_until(lambda: s.queue_depths() == {1: 1})
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert s.queue_depths() == {}


async def test_disabled_scheduler_passes_through():
    s = sched(FakePool(replicas=()), enabled=False)
    slot = await s.acquire("a", "t", 1, 1.0, 5, 5)
    assert slot.replica_hint is None and s.running() == []


async def test_arrivals_that_cannot_run_or_preempt_skip_the_policy_round():
    s = FleetScheduler(make_config(tick_s=60.0, max_inflight_per_replica=1), FakePool())
    rounds = 0
    pump = s.pump

    def counting_pump():
        nonlocal rounds
        rounds += 1
        return pump()

    s.pump = counting_pump
    await s.acquire("b0", "t", 2, 1.0, 5, 5)  # room: a round, dispatched
    assert rounds == 1
    waiters = [asyncio.create_task(s.acquire(f"b{i}", "t", 2, 1.0, 5, 5)) for i in range(1, 6)]
    await wait_until(lambda: s.queue_depths() == {2: 5})
    assert rounds == 1  # the flood's arrivals found no room and nothing to preempt
    premium = asyncio.create_task(s.acquire("p", "t", 0, 1.0, 5, 5))  # may preempt b0: a round
    await wait_until(lambda: rounds == 2)
    s.release("b0", 5)  # a release always runs a round: the premium (or a waiter) gets the slot
    assert rounds == 3
    assert (await asyncio.wait_for(premium, 2)).request_id == "p"
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
