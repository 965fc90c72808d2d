"""ProcessEngine: the native step loop in a child process (the shared contract runs in
test_engine_contract.py as ``native-process``; this file covers what only a process has:
the child's death, orphaning, failed starts, and control calls crossing the pipe)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.process.process_engine import ProcessEngine
from fleetserve.errors import EngineError, ServiceUnavailableError
from tests.engine.factories import greedy, make_generate_request

TIMEOUT = 120  # the child imports torch and loads the model on a shared 2-core box


def make_engine_config(path, **overrides) -> EngineConfig:
    return EngineConfig(**{"model": str(path), "max_model_len": 512, "num_kv_blocks": 128, **overrides})


@pytest.fixture
async def engine(tiny_llama_path):
    eng = ProcessEngine(make_engine_config(tiny_llama_path))
    await asyncio.wait_for(eng.start(), TIMEOUT)
    yield eng
    await eng.shutdown()


async def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def reference_tokens(path) -> list[int]:
    """Every token of ``long_request`` from an in-thread engine, uninterrupted."""
    reference = AsyncEngine(make_engine_config(path))
    try:
        return [t async for o in reference.generate(long_request("ref")) for t in o.token_ids_delta]
    finally:
        await reference.shutdown()


def long_request(rid: str, **overrides):
    return make_generate_request(request_id=rid, prompt_token_ids=[11, 12, 13, 14], params=greedy(max_tokens=300, ignore_eos=True),
                                 **overrides)


async def test_child_death_ends_streams_and_fails_health(engine):
    stream = engine.generate(long_request("victim"))
    first = await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    assert first.token_ids_delta and not first.finished
    os.kill(engine.pid, signal.SIGKILL)
    rest = [o async for o in stream]
    assert rest and rest[-1].finished and rest[-1].finish_reason == "abort"
    assert "exited" in rest[-1].error
    with pytest.raises(EngineError):
        await engine.check_health()
    assert not engine.stats().healthy
    with pytest.raises(ServiceUnavailableError):
        async for _ in engine.generate(long_request("after")):
            pass


async def test_preempted_request_resumes_with_every_token(engine, tiny_llama_path):
    expected = await reference_tokens(tiny_llama_path)

    tokens: list[int] = []
    stream = engine.generate(long_request("p"))
    first = await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    tokens += first.token_ids_delta
    assert await engine.preempt("p")  # running: evicted now, recomputed later
    tokens += [t async for o in stream for t in o.token_ids_delta]
    assert tokens == expected
    await wait_for(lambda: engine.stats().num_preemptions >= 1)


async def test_sleep_rejects_then_wake_serves(engine):
    await engine.sleep()
    assert engine.stats().sleeping
    with pytest.raises(ServiceUnavailableError):
        async for _ in engine.generate(long_request("asleep")):
            pass
    await engine.wake_up()
    outs = [o async for o in engine.generate(make_generate_request(params=greedy(max_tokens=4)))]
    assert outs[-1].finished and outs[-1].completion_tokens == 4
    assert await asyncio.wait_for(engine.drain(TIMEOUT), TIMEOUT) == 0
    await wait_for(lambda: engine.stats().kv_blocks_used == 0)


async def test_shutdown_stops_the_child_and_ends_open_streams(tiny_llama_path):
    eng = ProcessEngine(make_engine_config(tiny_llama_path))
    await asyncio.wait_for(eng.start(), TIMEOUT)
    stream = eng.generate(long_request("open"))
    await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    proc = eng._proc
    await eng.shutdown()
    assert proc.poll() is not None  # exited, not left behind
    rest = [o async for o in stream]
    assert rest[-1].finished and rest[-1].error == "engine shut down"


async def test_orphaned_child_exits(tiny_llama_path):
    eng = ProcessEngine(make_engine_config(tiny_llama_path))
    await asyncio.wait_for(eng.start(), TIMEOUT)
    proc = eng._proc
    eng._conn.close()  # the replica's end of the pipe vanishes, as when the replica dies
    assert await asyncio.to_thread(proc.wait, TIMEOUT) == 0


async def test_a_child_that_cannot_load_the_model_fails_start_with_its_error(tmp_path):
    eng = ProcessEngine(make_engine_config(tmp_path / "missing"))
    with pytest.raises(EngineError, match="engine process failed to start"):
        await asyncio.wait_for(eng.start(), TIMEOUT)
    with pytest.raises(EngineError):
        await eng.check_health()
    assert not eng.stats().healthy
    with pytest.raises(EngineError):  # a later request gets the same error, not a hang
        async for _ in eng.generate(long_request("late")):
            pass


async def test_child_paced_stream_keeps_every_token_through_preempt_and_abort(engine, tiny_llama_path):
    # The child holds outputs back for a stream's interval (pacing.OutputPacer). Preempting a
    # paced request and then aborting it must still hand over every token it made, in order.
    expected = await reference_tokens(tiny_llama_path)

    tokens: list[int] = []
    outs = []
    stream = engine.generate(long_request("p", stream_interval_s=0.3))  # several steps, well before the 300th
    first = await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    tokens += first.token_ids_delta
    assert await engine.preempt("p")
    second = await asyncio.wait_for(stream.__anext__(), TIMEOUT)  # resumed; merged over ~0.3 s
    tokens += second.token_ids_delta
    outs.append(second)
    await engine.abort("p")
    async for o in stream:
        tokens += o.token_ids_delta
        outs.append(o)
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert 1 < len(tokens) < len(expected) and tokens == expected[: len(tokens)]
    assert len(second.token_ids_delta) > 1  # paced: several steps in one output


async def test_child_sends_a_paced_stream_once_per_interval_not_once_per_step(engine):
    # 300 decode steps with a 1 s interval: the replica's loop gets a handful of merged
    # outputs, not one per step (what pacing in the child saves the replica). The bound
    # holds unless the 300 steps take over ~99 s.
    n_tokens = 0
    async for o in engine.generate(long_request("q", stream_interval_s=1.0)):
        n_tokens += len(o.token_ids_delta)
    assert n_tokens == 300
    assert engine.outputs_received < n_tokens / 3
