"""Fleet preemption against the real native engine (tiny checkpoint, in process, no Ray).

A batch request holds the only slot (fleet and engine); a premium request arrives. With
``preempt_via="replica_call"`` the fleet scheduler preempts the batch request through the
engine's ``preempt`` and then dispatches premium; with ``"engine"`` it dispatches premium at
once and the engine's priority scheduler preempts the batch request itself. Either way the
batch stream only pauses: its tokens equal an unpreempted reference run (nothing lost or
repeated).
"""

from __future__ import annotations

import asyncio

import pytest

from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.protocol import GenerateRequest
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.admission.policy import ReplicaCapacity
from fleetserve.admission.scheduler import FleetScheduler
from tests.admission.factories import make_config


class EnginePool:
    """ReplicaPool over one in-process engine."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.preempted: list[tuple[str, bool]] = []

    def capacity_snapshot(self):
        s = self.engine.stats()
        return [ReplicaCapacity("r0", s.num_running, s.num_waiting, s.kv_usage, s.healthy)]

    async def preempt(self, replica_id, request_id):
        ok = await self.engine.preempt(request_id)
        self.preempted.append((request_id, ok))
        return ok


def request(rid: str, max_tokens: int, priority: int) -> GenerateRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return GenerateRequest(request_id=rid, params=params, prompt="def fibonacci(n):", priority=priority)


async def collect(engine, req, progress: list):
    async for out in engine.generate(req):
        progress.extend(out.token_ids_delta)
    return list(progress)


@pytest.fixture
async def engine(tiny_llama_path):
    eng = AsyncEngine(EngineConfig(model=str(tiny_llama_path), num_kv_blocks=64, max_num_seqs=1,
                                   max_num_batched_tokens=64, num_threads=1))
    await eng.start()
    yield eng
    await eng.shutdown()


async def wait_until(cond, timeout_s=30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("via", ["engine", "replica_call"])
async def test_premium_preempts_batch_and_batch_resumes_with_tokens_kept(engine, via):
    reference = await collect(engine, request("ref", 48, priority=2), [])
    pool = EnginePool(engine)
    sched = FleetScheduler(make_config(max_inflight_per_replica=1, max_waiting_per_replica=0, tick_s=0.005,
                                       preempt_cooldown_s=0.2, preempt_via=via), pool)
    await sched.acquire("batch", "bulk", 2, 1.0, 6, 48)
    batch_tokens: list[int] = []
    batch = asyncio.create_task(collect(engine, request("batch", 48, priority=2), batch_tokens))
    await wait_until(lambda: len(batch_tokens) >= 4)

    slot = await asyncio.wait_for(sched.acquire("prem", "acme", 0, 1.0, 6, 8), 10)
    assert slot.request_id == "prem"
    assert pool.preempted == ([] if via == "engine" else [("batch", True)])
    assert [r.request_id for r in sched.running() if r.preempted] == ["batch"]
    premium = await collect(engine, request("prem", 8, priority=0), [])
    sched.release("prem", len(premium))
    assert len(premium) == 8

    tokens = await asyncio.wait_for(batch, 60)
    sched.release("batch", len(tokens))
    assert tokens == reference  # paused, resumed, nothing lost or repeated
    assert engine.stats().num_preemptions >= 1 and sched.running() == []
