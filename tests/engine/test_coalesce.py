"""Coalesced streams: a slow consumer gets fewer, merged outputs with exactly the same tokens."""

import asyncio

import pytest

from fleetserve.engine.async_engine import AsyncEngine
from fleetserve.engine.coalesce import drain_merged, merge_outputs
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
