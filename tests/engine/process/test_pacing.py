"""Stream pacing (engine.process.pacing): coalesced streams (a slow consumer gets fewer,
merged outputs with exactly the same tokens), the replica's ``paced`` wrapper, and the
engine process's OutputPacer (fake clock, hand-made outputs)."""

import asyncio

import pytest

from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.engine.process.pacing import OutputPacer, drain_merged, merge_outputs
from fleetserve.engine.protocol import RequestOutput, TokenLogprob
from tests.engine.factories import (
    greedy, make_byte_tokenizer, make_config, make_engine, make_generate_request, make_runner, run_to_completion,
)

TIMEOUT = 10


def test_merge_concatenates_deltas_and_keeps_last_status():
    outs = [
        RequestOutput("r", "a", [1], [TokenLogprob(1, -0.1, {})], completion_tokens=1, prompt_tokens=3),
        RequestOutput("r", "", [2], None, completion_tokens=2, prompt_tokens=3),
        RequestOutput("r", "bc", [3], [TokenLogprob(3, -0.3, {})], finished=True, finish_reason="stop", completion_tokens=3, prompt_tokens=3),
    ]
    m = merge_outputs(outs)
    assert (m.text_delta, m.token_ids_delta) == ("abc", [1, 2, 3])
    assert [lp.token_id for lp in m.logprobs_delta] == [1, 3]
    assert (m.finished, m.finish_reason, m.completion_tokens, m.prompt_tokens) == (True, "stop", 3, 3)
    assert merge_outputs(outs[1:2]) is outs[1]
    assert merge_outputs([outs[1], outs[1]]).logprobs_delta is None  # no logprobs asked: stays None
    with pytest.raises(ValueError):
        merge_outputs([outs[0], RequestOutput("other")])


def test_drain_merged_stops_at_the_finished_output():
    q: asyncio.Queue = asyncio.Queue()
    for o in (RequestOutput("r", "b", [2]), RequestOutput("r", "c", [3], finished=True, finish_reason="length")):
        q.put_nowait(o)
    q.put_nowait(RequestOutput("r", "x", [9]))  # never happens in practice; must not be swallowed
    m = drain_merged(RequestOutput("r", "a", [1]), q)
    assert (m.text_delta, m.token_ids_delta, m.finished) == ("abc", [1, 2, 3], True)
    assert q.qsize() == 1
    assert drain_merged(RequestOutput("r", "z", [5], finished=True), q).text_delta == "z"


@pytest.fixture
async def engine():
    runner = make_runner(block_size=4, vocab_size=128)  # ASCII bytes only: every token is text
    eng = AsyncEngine(make_config(), runner_factory=lambda cfg: runner, tokenizer=make_byte_tokenizer())
    await eng.start()
    eng.fake_runner = runner
    yield eng
    assert await asyncio.wait_for(eng.drain(TIMEOUT), TIMEOUT) == 0
    assert eng.stats().kv_blocks_used == 0
    await eng.shutdown()


def _unmerged(req) -> list[RequestOutput]:
    """The reference: the synchronous engine's outputs, one per step (never merged)."""
    eng = make_engine(make_runner(block_size=4, vocab_size=128), tokenizer=make_byte_tokenizer())
    eng.add_request(req)
    return run_to_completion(eng)[req.request_id]


async def _slow(engine, req) -> list[RequestOutput]:
    """Consume the first output, then nothing until the engine finished the request."""
    outs = []
    done_before = engine.stats().num_finished
    async for o in engine.generate(req):
        outs.append(o)
        if len(outs) == 1:
            async def finished():
                while engine.stats().num_finished <= done_before:
                    await asyncio.sleep(0.005)
            await asyncio.wait_for(finished(), TIMEOUT)
    return outs


@pytest.mark.parametrize("stop_at", [None, (5, 8)])
async def test_slow_consumer_gets_merged_outputs_identical_to_unmerged(engine, stop_at):
    prompt = engine.encode("hello")
    params = dict(max_tokens=16, logprobs=2)
    if stop_at is not None:
        ref_text = engine._tok().decode(engine.fake_runner.reference(prompt, 16))
        params["stop"] = [ref_text[stop_at[0]:stop_at[1]]]
    fast = _unmerged(make_generate_request(prompt_token_ids=prompt, params=greedy(**params)))
    slow = await asyncio.wait_for(_slow(engine, make_generate_request(prompt_token_ids=prompt, params=greedy(**params))), TIMEOUT)
    assert len(fast) > 2 and len(slow) <= 2  # what the engine produced meanwhile arrived as one output
    assert "".join(o.text_delta for o in slow) == "".join(o.text_delta for o in fast)
    assert [t for o in slow for t in o.token_ids_delta] == [t for o in fast for t in o.token_ids_delta]
    assert [lp.token_id for o in slow for lp in o.logprobs_delta] == [lp.token_id for o in fast for lp in o.logprobs_delta]
    assert [t for o in slow for t in o.token_ids_delta] == [lp.token_id for o in slow for lp in o.logprobs_delta]
    last_f, last_s = fast[-1], slow[-1]
    assert (last_s.finished, last_s.finish_reason, last_s.completion_tokens) == (True, last_f.finish_reason, last_f.completion_tokens)
    if stop_at is not None:
        assert last_s.finish_reason == "stop" and params["stop"][0] not in "".join(o.text_delta for o in slow)


async def per_step_stream(n: int, step_s: float, closed: list):
    """A stand-in for an engine that yields one output per step (as vLLM's stream does)."""
    try:
        for i in range(n):
            await asyncio.sleep(step_s)
            yield RequestOutput("r", str(i % 10), [i], finished=i == n - 1, completion_tokens=i + 1)
    finally:
        closed.append(True)


async def test_paced_merges_per_interval_and_passes_first_and_last_at_once():
    from fleetserve.engine.process.pacing import paced

    loop = asyncio.get_running_loop()
    closed: list = []
    t0 = loop.time()
    arrivals, outs = [], []
    async for o in paced(per_step_stream(40, 0.005, closed), 0.05):
        arrivals.append(loop.time() - t0)
        outs.append(o)
    assert [t for o in outs for t in o.token_ids_delta] == list(range(40))  # exact, in order
    assert "".join(o.text_delta for o in outs) == "".join(str(i % 10) for i in range(40))
    assert outs[0].token_ids_delta == [0] and outs[-1].finished and outs[-1].completion_tokens == 40
    assert not any(o.finished for o in outs[:-1])
    assert all(b - a >= 0.05 - 0.005 for a, b in zip(arrivals[:-1], arrivals[1:-1]))  # one per interval
    assert len(outs) < 40 and closed == [True]

    # An interval longer than the stream: first output, then the final one when it finishes.
    t0 = loop.time()
    outs = [o async for o in paced(per_step_stream(10, 0.005, closed), 30.0)]
    assert loop.time() - t0 < 5.0 and len(outs) == 2 and outs[-1].finished
    assert [t for o in outs for t in o.token_ids_delta] == list(range(10))


async def test_paced_close_cancels_the_pending_pull_and_closes_the_stream():
    from fleetserve.engine.process.pacing import paced

    closed: list = []
    pulled: list = []

    async def counted(stream):
        async for o in stream:
            pulled.append(o)
            yield o

    gen = paced(counted(per_step_stream(1000, 0.005, closed)), 30.0)
    first = await asyncio.wait_for(gen.__anext__(), TIMEOUT)
    assert first.token_ids_delta == [0]
    pending = asyncio.ensure_future(gen.__anext__())

    async def until(pred):
        while not pred():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(until(lambda: len(pulled) >= 3), TIMEOUT)  # later outputs are being held
    assert not pending.done()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await asyncio.wait_for(until(lambda: closed == [True]), TIMEOUT)  # the cancelled pull closes the stream


# ---------------------------------------------------------------- OutputPacer (engine process)
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def out(rid: str, tok: int, finished: bool = False) -> RequestOutput:
    return RequestOutput(rid, text_delta=f"<{tok}>", token_ids_delta=[tok], finished=finished,
                         finish_reason="length" if finished else None)


def tokens(outs) -> list[int]:
    return [t for o in outs for t in o.token_ids_delta]


def test_first_output_at_once_then_one_merged_output_per_interval():
    clock = Clock()
    p = OutputPacer(clock)
    p.track("a", 0.25)
    assert tokens(p.offer([out("a", 1)])) == [1]  # the first token never waits
    sent = []
    for tok in range(2, 10):  # 8 steps of 1/16 s (exact in binary floating point)
        clock.t += 0.0625
        sent.append(p.offer([out("a", tok)]) + p.due())
    batches = [tokens(s) for s in sent if s]
    assert batches == [[2, 3, 4, 5], [6, 7, 8, 9]]  # due at +0.25 and +0.50
    assert "".join(o.text_delta for s in sent for o in s) == "".join(f"<{t}>" for t in range(2, 10))


def test_final_output_is_never_held_and_carries_what_was_held():
    clock = Clock()
    p = OutputPacer(clock)
    p.track("a", 30.0)
    p.offer([out("a", 1)])
    clock.t += 0.01
    assert p.offer([out("a", 2)]) == []
    clock.t += 0.01
    last = p.offer([out("a", 3, finished=True)])
    assert len(last) == 1 and last[0].finished and tokens(last) == [2, 3] and last[0].text_delta == "<2><3>"
    assert p.num_tracked() == 0  # forgotten once finished


def test_unpaced_and_untracked_requests_pass_every_output():
    p = OutputPacer(Clock())
    p.track("fast", 0.0)
    assert tokens(p.offer([out("fast", 1), out("other", 7)])) == [1, 7]
    assert tokens(p.offer([out("fast", 2)])) == [2]
    assert p.num_tracked() == 0


def test_held_outputs_leave_when_due_without_new_output_and_on_flush():
    # A preempted request makes no output for a while: what it made is still sent when due.
    clock = Clock()
    p = OutputPacer(clock)
    p.track("a", 0.25)
    p.track("b", 0.25)
    p.offer([out("a", 1), out("b", 1)])
    clock.t += 0.05
    assert p.offer([out("a", 2), out("b", 2)]) == [] and p.due() == []
    clock.t += 0.25
    assert sorted((o.request_id, tokens([o])) for o in p.due()) == [("a", [2]), ("b", [2])]
    clock.t += 0.01
    p.offer([out("a", 3)])
    assert [(o.request_id, tokens([o])) for o in p.flush_all()] == [("a", [3])]  # before the process blocks
    assert p.flush_all() == []


def test_abort_output_carries_held_tokens_in_front():
    clock = Clock()
    p = OutputPacer(clock)
    p.track("a", 1.0)
    p.offer([out("a", 1)])
    clock.t += 0.1
    p.offer([out("a", 2)])
    aborted = RequestOutput("a", finished=True, finish_reason="abort")
    final = p.take("a", aborted)
    assert final.finished and final.finish_reason == "abort" and tokens([final]) == [2]
    assert p.take("a", None) is None and p.num_tracked() == 0
