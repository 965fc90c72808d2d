"""Offline LLM API on the fake runner: batching, n, priorities, bad prompts."""

import pytest

from fleetserve import LLM, SamplingParams
from fleetserve.errors import ContextLengthError
from tests.engine.factories import make_runner


@pytest.fixture
def runner():
    return make_runner(block_size=4, max_model_len=64)


@pytest.fixture
def llm(runner):
    return LLM(model="fake", runner=runner, block_size=4, num_kv_blocks=32, max_num_seqs=4, max_num_batched_tokens=16)


def test_results_in_prompt_order_with_per_prompt_params(llm, runner):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (3, 5, 2)]
    outs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outs] == [runner.reference(p, n) for p, n in zip(prompts, (3, 5, 2))]
    assert [o.prompt_token_ids for o in outs] == prompts
    assert llm.engine.kv.num_used_blocks == 0


def test_n_completions_use_seed_plus_i(llm):
    out = llm.generate([1, 2, 3], SamplingParams(temperature=1.0, seed=10, n=3, max_tokens=6))[0]
    assert len(out.outputs) == 3
    singles = [llm.generate([1, 2, 3], SamplingParams(temperature=1.0, seed=10 + i, max_tokens=6))[0] for i in range(3)]
    assert [c.token_ids for c in out.outputs] == [s.outputs[0].token_ids for s in singles]


def test_bad_prompt_raises_and_leaves_nothing_running(llm):
    with pytest.raises(ContextLengthError) as info:
        llm.generate([[1, 2], list(range(64))], SamplingParams(temperature=0, max_tokens=2))
    assert info.value.field == "prompt"
    assert not llm.engine.has_unfinished() and llm.engine.kv.num_used_blocks == 0
