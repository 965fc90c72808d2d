"""ModelReplica hosting the real native engine, outside Ray: streaming, cancel -> abort,
routing stats and drain on shutdown."""

from __future__ import annotations

import asyncio

import pytest

from fleetserve.config import ModelConfig
from fleetserve.deployments.replica import ModelReplica
from fleetserve.engine.protocol import GenerateRequest
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import RequestMigrated, ServiceUnavailableError


async def make_replica(checkpoint, stream_interval_s: float = 0.0, drain_mode: str = "finish") -> ModelReplica:
    cfg = ModelConfig(name="tiny", checkpoint=str(checkpoint), drain_timeout_s=30, stream_interval_s=stream_interval_s,
                      drain_mode=drain_mode, engine_args={"num_kv_blocks": 128, "num_threads": 1})
    replica = ModelReplica.__new__(ModelReplica)  # Serve awaits the async constructor itself
    await replica.__init__(cfg.model_dump(mode="json"))
    return replica


def request(rid: str, max_tokens: int) -> GenerateRequest:
    return GenerateRequest(request_id=rid, prompt="def f(x):", params=SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))


async def wait_until(pred, timeout_s=30.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_stream_cancel_stats_and_drain(tiny_llama_path):
    replica = await make_replica(tiny_llama_path)
    outs = [o async for o in replica.generate(request("a", 5))]
    assert outs[-1].finished and sum(len(o.token_ids_delta) for o in outs) == 5

    # A consumer that goes away mid-stream aborts the engine request (frees its KV blocks).
    gen = replica.generate(request("b", 1000))
    await gen.__anext__()
    assert replica.record_routing_stats()["num_running"] + replica.record_routing_stats()["num_waiting"] == 1
    await gen.aclose()
    await wait_until(lambda: replica.record_routing_stats()["num_running"] == 0)
    stats = replica.record_routing_stats()
    assert {"num_waiting", "num_running", "kv_usage", "healthy", "draining", "ts"} <= set(stats)
    await replica.check_health()

    # Shutdown drains: in-flight requests finish, new ones are refused.
    inflight = asyncio.create_task(_collect(replica.generate(request("c", 20))))
    await wait_until(lambda: replica.record_routing_stats()["in_flight"] == 1)
    shutdown = asyncio.create_task(replica.__del__())
    await wait_until(lambda: replica.record_routing_stats()["draining"])
    with pytest.raises(ServiceUnavailableError):
        await replica.generate(request("d", 1)).__anext__()
    done = await inflight
    assert done[-1].finished and done[-1].finish_reason == "length"
    await shutdown


async def _collect(gen):
    return [o async for o in gen]


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
@pytest.mark.parametrize("model_interval", [0.0, 0.15])
async def test_stream_interval_merges_outputs_without_losing_tokens(tiny_llama_path, model_interval):
    """The interval comes from the request (a class's) or the model's floor, whichever is larger."""
    replica = await make_replica(tiny_llama_path, stream_interval_s=model_interval)
    fine = request("fine", 40)
    every_step = [o async for o in replica._engine.generate(fine)]  # the engine unpaced: one output per step

    coarse_req = request("coarse", 40)
    coarse_req.stream_interval_s = 0.15 - model_interval  # 0.15 either way
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    arrivals, coarse = [], []
    async for o in replica.generate(coarse_req):
        arrivals.append(loop.time() - t0)
        coarse.append(o)
    # Same tokens, in order, none lost or repeated; the stream ends finished.
    assert [t for o in coarse for t in o.token_ids_delta] == [t for o in every_step for t in o.token_ids_delta]
    assert coarse[-1].finished and coarse[-1].completion_tokens == 40
    # The first chunk is not held back; later ones come at most once per interval, except the
    # final one, which leaves as soon as the request finishes.
    assert len(coarse[0].token_ids_delta) < 10  # not held for the interval (a lagging pull may merge two steps)
    assert all(b - a >= 0.15 - 0.01 for a, b in zip(arrivals[:-1], arrivals[1:-1]))
    assert len(coarse) < len(every_step)


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_replica_paces_engines_that_stream_per_step(tiny_llama_path):
    """An engine without its own pacing (as the vLLM backend) is paced by the replica, with
    the same guarantees: exact tokens, first chunk at once, one chunk per interval, and the
    final chunk as soon as the request finishes."""
    from dataclasses import replace

    from fleetserve.deployments.engine_factory import build_engine

    from fleetserve.engine.protocol import EngineCapabilities

    class PerStepEngine:
        def capabilities(self):
            return EngineCapabilities(paces_streams=False)

        def __init__(self, inner):
            self._inner = inner

        def generate(self, request):
            return self._inner.generate(replace(request, stream_interval_s=0.0))  # one output per step

        def __getattr__(self, name):
            return getattr(self._inner, name)

    cfg = ModelConfig(name="tiny", checkpoint=str(tiny_llama_path), stream_interval_s=0.1,
                      engine_args={"num_kv_blocks": 128, "num_threads": 1})
    replica = ModelReplica.__new__(ModelReplica)
    await replica.__init__(cfg.model_dump(mode="json"), engine_factory=lambda c: PerStepEngine(build_engine(c)))
    every_step = [o async for o in replica._engine.generate(request("ref", 40))]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    arrivals, outs = [], []
    async for o in replica.generate(request("paced", 40)):
        arrivals.append(loop.time() - t0)
        outs.append(o)
    assert [t for o in outs for t in o.token_ids_delta] == [t for o in every_step for t in o.token_ids_delta]
    assert len(outs[0].token_ids_delta) < 10 and outs[-1].finished and outs[-1].completion_tokens == 40
    assert all(b - a >= 0.1 - 0.01 for a, b in zip(arrivals[:-1], arrivals[1:-1]))
    assert len(outs) < len(every_step)
    # A consumer that goes away while outputs are held aborts the engine request.
    gen = replica.generate(request("gone", 200))
    await gen.__anext__()
    await gen.aclose()
    await wait_until(lambda: replica.record_routing_stats()["num_running"] == 0)


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_admin_drain_stops_admission_lets_in_flight_finish_and_resumes(tiny_llama_path):
    replica = await make_replica(tiny_llama_path)
    try:
        stats = replica.replica_stats()
        assert stats.node_ip is not None and not stats.draining
        missed = await replica.set_draining(True, target_replica="another-replica")
        assert not missed.applied and not replica.replica_stats().draining  # a call for another replica changes nothing
        inflight = asyncio.create_task(_collect(replica.generate(request("c", 20))))
        await wait_until(lambda: replica.replica_stats().in_flight == 1)
        ack = await replica.set_draining(True, target_replica=stats.replica)
        assert ack.applied and ack.draining and ack.in_flight == 1
        assert replica.record_routing_stats()["draining"] is True
        with pytest.raises(ServiceUnavailableError):
            await replica.generate(request("d", 1)).__anext__()
        done = await inflight
        assert done[-1].finish_reason == "length" and sum(len(o.token_ids_delta) for o in done) == 20
        assert (await replica.set_draining(False)).draining is False
        outs = [o async for o in replica.generate(request("e", 3))]
        assert outs[-1].finished
    finally:
        await replica.__del__()  # Serve's shutdown hook: nothing is in flight, so it returns at once


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_migrate_drain_hands_requests_back_and_a_continuation_completes_them(tiny_llama_path):
    """Drain mode migrate: the in-flight stream ends at once with RequestMigrated naming the
    replica (its engine request and KV freed); the same request resubmitted with the tokens
    already received continues to exactly the uninterrupted completion."""
    replica = await make_replica(tiny_llama_path, drain_mode="migrate")
    try:
        sampled = SamplingParams(max_tokens=60, temperature=1.0, seed=11, ignore_eos=True)
        whole = [t for o in [o async for o in replica.generate(
            GenerateRequest("w", sampled, prompt="def f(x):"))] for t in o.token_ids_delta]
        got: list[int] = []
        stream = replica.generate(GenerateRequest("m", sampled, prompt="def f(x):"))
        got += (await stream.__anext__()).token_ids_delta
        ack = await replica.set_draining(True)
        assert ack.applied and ack.in_flight == 1 and ack.migrated == 1
        with pytest.raises(RequestMigrated) as e:
            async for out in stream:
                got += out.token_ids_delta
        assert e.value.replica == replica.replica_stats().replica
        assert 0 < len(got) < 60 and got == whole[:len(got)]
        await wait_until(lambda: replica.replica_stats().num_running == 0 and replica.replica_stats().in_flight == 0)
        assert (await replica.set_draining(False)).migrated == 0
        cont = GenerateRequest("m.r1", sampled, prompt="def f(x):", resume_token_ids=got)
        rest = [t for o in [o async for o in replica.generate(cont)] for t in o.token_ids_delta]
        assert got + rest == whole
    finally:
        await replica.__del__()
