"""AsyncEngine with the fake runner: streaming, abort, drain, sleep/wake, failure isolation."""

import asyncio
import os

import pytest

from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.engine.protocol import EngineProtocol
from fleetserve.errors import ContextLengthError, ServiceUnavailableError
from tests.engine.factories import greedy, make_byte_tokenizer, make_config, make_generate_request, make_runner

TIMEOUT = 10


@pytest.fixture
def runner():
    return make_runner(block_size=4, vocab_size=128)


@pytest.fixture
async def engine(runner):
    eng = AsyncEngine(make_config(), runner_factory=lambda cfg: runner, tokenizer=make_byte_tokenizer())
    await eng.start()
    yield eng
    assert await asyncio.wait_for(eng.drain(TIMEOUT), TIMEOUT) == 0
    assert eng.stats().kv_blocks_used == 0  # every test ends with all blocks free
    await eng.shutdown()


async def collect(engine, req):
    return [o async for o in engine.generate(req)]


async def wait_running(engine, n: int) -> None:
    while engine.stats().num_running < n:
        await asyncio.sleep(0.001)


async def wait_queued(engine) -> None:
    """Until a new request waits in the step thread's inbox (bound it with wait_for)."""
    while not engine._adds:
        await asyncio.sleep(0.001)


async def test_requests_queued_when_the_engine_stops_fail_with_503(runner):
    eng = AsyncEngine(make_config(), runner_factory=lambda cfg: runner, tokenizer=make_byte_tokenizer())
    await eng.start()
    with eng._cond:  # queued and the stop flag set before the step thread can look
        add = eng._submit_add(make_generate_request(prompt_token_ids=[1, 2, 3]))
        cmd = eng._submit(lambda: None)
        eng._stopping = True
        eng._cond.notify()
    await eng.shutdown()
    for future in (add, cmd):
        with pytest.raises(ServiceUnavailableError):
            await asyncio.wait_for(asyncio.wrap_future(future), TIMEOUT)


async def test_streams_incremental_outputs(engine, runner):
    assert isinstance(engine, EngineProtocol)
    prompt = engine.encode("hi there")
    outs = await asyncio.wait_for(
        collect(engine, make_generate_request(prompt_token_ids=prompt, params=greedy(max_tokens=6))), TIMEOUT
    )
    # Deltas queued while the consumer was busy are merged, so 1..6 outputs; each carries tokens.
    assert 1 <= len(outs) <= 6 and outs[-1].finished and outs[-1].finish_reason == "length"
    assert all(o.token_ids_delta for o in outs) and not any(o.finished for o in outs[:-1])
    assert [t for o in outs for t in o.token_ids_delta] == runner.reference(prompt, 6)
    assert "".join(o.text_delta for o in outs) == engine._api_tokenizer.decode(runner.reference(prompt, 6))
    assert engine.stats().num_finished == 1 and engine.stats().kv_blocks_used == 0


async def test_first_output_arrives_before_the_request_finishes(engine, runner):
    prompt = engine.encode("stream me")
    gen = engine.generate(make_generate_request(prompt_token_ids=prompt, params=greedy(max_tokens=200)))
    first = await asyncio.wait_for(gen.__anext__(), TIMEOUT)
    assert not first.finished and 1 <= len(first.token_ids_delta) < 200
    rest = [o async for o in gen]
    assert [t for o in [first, *rest] for t in o.token_ids_delta] == runner.reference(prompt, 200)


async def test_concurrent_streams_and_text_prompt(engine, runner):
    reqs = [make_generate_request(prompt=f"prompt {i}", prompt_token_ids=None, params=greedy(max_tokens=5)) for i in range(4)]
    results = await asyncio.wait_for(asyncio.gather(*(collect(engine, r) for r in reqs)), TIMEOUT)
    for r, outs in zip(reqs, results):
        assert [t for o in outs for t in o.token_ids_delta] == runner.reference(engine.encode(r.prompt), 5)


async def test_validation_error_raises_before_first_output(engine):
    with pytest.raises(ContextLengthError) as info:
        await collect(engine, make_generate_request(params=greedy(max_tokens=10_000)))
    assert info.value.field == "max_tokens"
    await engine.check_health()


async def test_abort_ends_stream_and_consumer_cancel_aborts(engine):
    req = make_generate_request(params=greedy(max_tokens=200))
    gen = engine.generate(req)
    first = await asyncio.wait_for(gen.__anext__(), TIMEOUT)
    assert not first.finished
    await engine.abort(req.request_id)
    rest = [o async for o in gen]
    assert rest[-1].finish_reason == "abort"
    # A consumer that goes away aborts its request.
    req2 = make_generate_request(params=greedy(max_tokens=200))
    task = asyncio.ensure_future(collect(engine, req2))
    async def started():
        while engine.stats().num_running == 0:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(started(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(engine.drain(TIMEOUT), TIMEOUT)
    assert engine.stats().kv_blocks_used == 0 and engine.stats().num_running == 0


async def test_failing_request_does_not_kill_the_loop(engine, runner):
    runner.fail_on_token = 127
    bad = await asyncio.wait_for(collect(engine, make_generate_request(prompt_token_ids=[1, 127])), TIMEOUT)
    assert bad[-1].finish_reason == "error"
    runner.fail_on_token = None
    ok = await asyncio.wait_for(collect(engine, make_generate_request(prompt_token_ids=[1, 2])), TIMEOUT)
    assert ok[-1].finish_reason == "length"
    await engine.check_health()


async def test_sleep_rejects_new_requests_and_wake_resumes_inflight(engine, runner):
    req = make_generate_request(prompt_token_ids=[5, 6, 7], params=greedy(max_tokens=30))
    gen = engine.generate(req)
    outs = [await asyncio.wait_for(gen.__anext__(), TIMEOUT)]
    await engine.sleep()
    assert engine.stats().sleeping and runner.kv is None
    with pytest.raises(ServiceUnavailableError):
        await collect(engine, make_generate_request())
    await engine.wake_up()
    outs += [o async for o in gen]
    assert [t for o in outs for t in o.token_ids_delta] == runner.reference([5, 6, 7], 30)


async def test_drain_stops_admission_and_reports_unfinished(engine):
    long = make_generate_request(params=greedy(max_tokens=200))
    gen = engine.generate(long)
    await asyncio.wait_for(gen.__anext__(), TIMEOUT)
    assert await engine.drain(0.01) == 1
    with pytest.raises(ServiceUnavailableError):
        await collect(engine, make_generate_request())
    await engine.abort(long.request_id)
    assert await asyncio.wait_for(engine.drain(TIMEOUT), TIMEOUT) == 0
    await gen.aclose()


async def test_model_info_and_chat_template(engine):
    info = engine.model_info()
    assert info.vocab_size == 128 and info.has_chat_template
    ids = engine.apply_chat_template([{"role": "user", "content": "yo"}])
    assert engine._api_tokenizer.decode(ids).startswith("user: yo")


@pytest.mark.parametrize("policy, expected", [("auto", "SCHED_IDLE"), ("idle", "SCHED_IDLE"), ("normal", "SCHED_OTHER")])
async def test_step_thread_cpu_policy(runner, policy, expected):
    # On CPU ("auto") the step thread yields its core to the request path at once.
    eng = AsyncEngine(make_config(step_thread_policy=policy), runner_factory=lambda cfg: runner, tokenizer=make_byte_tokenizer())
    await eng.start()
    try:
        prompt = eng.encode("policy")
        outs = await asyncio.wait_for(collect(eng, make_generate_request(prompt_token_ids=prompt, params=greedy(max_tokens=4))), TIMEOUT)
        assert [t for o in outs for t in o.token_ids_delta] == runner.reference(prompt, 4)
        assert os.sched_getscheduler(eng._thread.native_id) == getattr(os, expected)
        assert eng.step_thread_idle is (expected == "SCHED_IDLE")
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the event loop's thread is untouched
    finally:
        await eng.shutdown()


def test_step_thread_policy_auto_is_normal_on_cuda():
    from fleetserve.engine.config import EngineConfig

    assert EngineConfig(model="m", device="cuda:0").step_thread_idle is False
    assert EngineConfig(model="m").step_thread_idle is True
    with pytest.raises(ValueError, match="step_thread_policy"):
        EngineConfig(model="m", step_thread_policy="realtime")


def record_delivering_threads(eng) -> list[tuple[int, set[str]]]:
    """Spy on ``eng._deliver``: (native id of the delivering thread, request ids) per call."""
    import threading

    seen: list[tuple[int, set[str]]] = []
    deliver = eng._deliver

    def spy(outputs):
        seen.append((threading.get_native_id(), {o.request_id for o in outputs}))
        deliver(outputs)

    eng._deliver = spy
    return seen


def first_delivery_thread(seen: list[tuple[int, set[str]]], request_id: str) -> int:
    return next(tid for tid, ids in seen if request_id in ids)


async def test_isolated_priority_prefill_runs_on_the_normal_priority_lane(runner):
    # Batch-class streams keep the SCHED_IDLE step thread busy; a premium arrival's isolated
    # prefill step is handed to the lane thread, which keeps the normal policy, and its first
    # token is delivered from there too (not handed back to the SCHED_IDLE thread to send).
    eng = AsyncEngine(make_config(max_num_batched_tokens=64), runner_factory=lambda cfg: runner, tokenizer=make_byte_tokenizer())
    seen = record_delivering_threads(eng)
    await eng.start()
    try:
        assert eng.step_thread_idle and eng._lane is not None
        assert os.sched_getscheduler(eng._lane.native_id) == os.SCHED_OTHER
        batch = [make_generate_request(prompt_token_ids=[i + 1, 2, 3], params=greedy(max_tokens=150), priority=2) for i in range(3)]
        batch_runs = [asyncio.create_task(collect(eng, r)) for r in batch]
        await asyncio.wait_for(wait_running(eng, 3), TIMEOUT)
        premium = make_generate_request(prompt_token_ids=[9, 8, 7, 6], params=greedy(max_tokens=5), priority=0)
        outs = await asyncio.wait_for(collect(eng, premium), TIMEOUT)
        assert [t for o in outs for t in o.token_ids_delta] == runner.reference([9, 8, 7, 6], 5)
        assert eng._lane.num_runs >= 1 and eng.engine.scheduler.num_isolated_steps >= 1
        assert first_delivery_thread(seen, premium.request_id) == eng._lane.native_id
        for r, task in zip(batch, batch_runs):  # nothing lost or repeated for the batch streams
            got = await asyncio.wait_for(task, TIMEOUT)
            assert [t for o in got for t in o.token_ids_delta] == runner.reference(r.prompt_token_ids, 150)
    finally:
        await eng.shutdown()


async def test_priority_arrival_is_prefilled_between_layers_of_a_running_step():
    # A running batch step holds its pass between the "layers" until the premium request is
    # queued: it must be added and prefilled in that pause (on the normal-priority lane),
    # not after the step.
    import threading
    import time

    runner = make_runner(block_size=4, vocab_size=128, layered=True)
    execute = runner.execute
    armed, holding = threading.Event(), threading.Event()

    def held_between_layers(model_input, between_layers=None):
        def pause():
            if between_layers is not None and armed.is_set() and not holding.is_set():
                holding.set()  # once: this pass waits for the premium request
                deadline = time.monotonic() + TIMEOUT
                while not eng._adds and time.monotonic() < deadline:
                    time.sleep(0.001)
            if between_layers is not None:
                between_layers()

        return execute(model_input, between_layers=pause)

    runner.execute = held_between_layers
    eng = AsyncEngine(make_config(max_num_batched_tokens=64), runner_factory=lambda cfg: runner, tokenizer=make_byte_tokenizer())
    seen = record_delivering_threads(eng)
    await eng.start()
    try:
        batch = [make_generate_request(prompt_token_ids=[i + 1, 2, 3], params=greedy(max_tokens=60), priority=2) for i in range(3)]
        batch_runs = [asyncio.create_task(collect(eng, r)) for r in batch]

        await asyncio.wait_for(wait_running(eng, 3), TIMEOUT)
        armed.set()
        await asyncio.wait_for(asyncio.to_thread(holding.wait), TIMEOUT)
        premium = make_generate_request(prompt_token_ids=[9, 8, 7, 6], params=greedy(max_tokens=5), priority=0)
        outs = await asyncio.wait_for(collect(eng, premium), TIMEOUT)
        assert [t for o in outs for t in o.token_ids_delta] == runner.reference([9, 8, 7, 6], 5)
        sched = eng.engine.scheduler
        assert sched.num_side_prefills == 1 and sched.num_isolated_steps == 0 and eng._lane.num_runs >= 1
        assert first_delivery_thread(seen, premium.request_id) == eng._lane.native_id  # sent at normal priority
        for r, task in zip(batch, batch_runs):  # nothing lost or repeated for the batch streams
            got = await asyncio.wait_for(task, TIMEOUT)
            assert [t for o in got for t in o.token_ids_delta] == runner.reference(r.prompt_token_ids, 60)
        assert eng.engine.kv.num_used_blocks == 0
    finally:
        await eng.shutdown()


@pytest.mark.parametrize("cap", [1, 2])
async def test_arrivals_during_one_step_get_side_prefills_up_to_the_cap(cap):
    # Three premium requests arrive while one batch step's pass is paused, one before each of
    # three pause points: the first ``cap`` are prefilled in that pass, the rest after it.
    # Every stream gets exactly its tokens.
    import threading

    runner = make_runner(block_size=4, vocab_size=128, layered=True)
    execute = runner.execute
    armed = threading.Event()
    holding = [threading.Event() for _ in range(3)]
    arrived = [threading.Event() for _ in range(3)]

    def held_between_layers(model_input, between_layers=None):
        def pause():
            if between_layers is None:
                return
            if armed.is_set() and not holding[0].is_set():
                for k in range(3):  # three pause points of this one pass
                    holding[k].set()
                    arrived[k].wait(TIMEOUT)
                    between_layers()
                return
            between_layers()

        return execute(model_input, between_layers=pause)

    runner.execute = held_between_layers
    eng = AsyncEngine(make_config(max_num_batched_tokens=64, max_side_prefills_per_step=cap),
                      runner_factory=lambda cfg: runner, tokenizer=make_byte_tokenizer())
    await eng.start()
    try:
        batch = [make_generate_request(prompt_token_ids=[i + 1, 2, 3], params=greedy(max_tokens=40), priority=2) for i in range(3)]
        batch_runs = [asyncio.create_task(collect(eng, r)) for r in batch]
        await asyncio.wait_for(wait_running(eng, 3), TIMEOUT)
        armed.set()
        premium, runs = [], []
        for k in range(3):
            await asyncio.wait_for(asyncio.to_thread(holding[k].wait), TIMEOUT)
            r = make_generate_request(prompt_token_ids=[9, 8, 7, 6 - k], params=greedy(max_tokens=4), priority=0)
            premium.append(r)
            runs.append(asyncio.create_task(collect(eng, r)))
            await asyncio.wait_for(wait_queued(eng), TIMEOUT)
            arrived[k].set()
        for r, task in zip(premium, runs):
            got = await asyncio.wait_for(task, TIMEOUT)
            assert [t for o in got for t in o.token_ids_delta] == runner.reference(r.prompt_token_ids, 4)
        assert eng.engine.scheduler.num_side_prefills == cap
        for r, task in zip(batch, batch_runs):
            got = await asyncio.wait_for(task, TIMEOUT)
            assert [t for o in got for t in o.token_ids_delta] == runner.reference(r.prompt_token_ids, 40)
        assert eng.engine.kv.num_used_blocks == 0
    finally:
        await eng.shutdown()


def slow_steps(runner, seconds: float) -> None:
    """Every forward pass of the fake runner takes at least ``seconds``."""
    import time

    execute = runner.execute

    def slow(model_input):
        time.sleep(seconds)
        return execute(model_input)

    runner.execute = slow


async def test_paced_stream_merges_steps_and_never_holds_the_last_token(engine, runner):
    slow_steps(runner, 0.005)
    prompt = engine.encode("paced")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    arrivals, outs = [], []
    async for o in engine.generate(make_generate_request(prompt_token_ids=prompt, params=greedy(max_tokens=60), stream_interval_s=0.1)):
        arrivals.append(loop.time() - t0)
        outs.append(o)
    assert [t for o in outs for t in o.token_ids_delta] == runner.reference(prompt, 60)  # exact: nothing lost or repeated
    # The first output is not held for the interval (a lagging consumer may find two steps merged).
    assert len(outs[0].token_ids_delta) < 10 and outs[-1].finished
    assert all(b - a >= 0.1 - 0.01 for a, b in zip(arrivals[:-1], arrivals[1:-1]))  # one chunk per interval
    assert len(outs) <= 2 + arrivals[-1] / 0.1

    # An interval longer than the whole generation: the final output leaves when the request
    # finishes, not when the interval ends.
    t0 = loop.time()
    outs = await asyncio.wait_for(
        collect(engine, make_generate_request(prompt_token_ids=prompt, params=greedy(max_tokens=20), stream_interval_s=30.0)), TIMEOUT
    )
    assert loop.time() - t0 < 5.0
    assert len(outs) == 2 and outs[-1].finished
    assert [t for o in outs for t in o.token_ids_delta] == runner.reference(prompt, 20)
    assert not engine._pacers and not engine._finished


async def test_consumer_cancelled_while_pacing_aborts_the_request(engine, runner):
    slow_steps(runner, 0.01)
    gen = engine.generate(make_generate_request(prompt_token_ids=engine.encode("bye"), params=greedy(max_tokens=200), stream_interval_s=30.0))
    first = await asyncio.wait_for(gen.__anext__(), TIMEOUT)
    assert not first.finished
    pending = asyncio.create_task(gen.__anext__())

    async def pacing():
        while not engine._pacers:  # waiting out its interval
            await asyncio.sleep(0.001)

    await asyncio.wait_for(pacing(), TIMEOUT)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    async def aborted():
        while engine.stats().num_running:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(aborted(), TIMEOUT)
    assert not engine._pacers and not engine._finished
