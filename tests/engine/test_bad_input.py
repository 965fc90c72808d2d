"""Requests that can never be served raise a typed error naming the field."""

import pytest

from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import ContextLengthError, InvalidRequestError
from tests.engine.factories import greedy, make_engine, make_generate_request, make_runner


@pytest.fixture
def engine():
    return make_engine(make_runner(block_size=4, max_model_len=64), num_kv_blocks=12)  # 48 KV tokens


@pytest.mark.parametrize(
    "overrides,error,field",
    [
        ({"prompt_token_ids": list(range(1, 60)) + [1] * 5}, ContextLengthError, "prompt"),
        ({"prompt_token_ids": [1] * 50}, ContextLengthError, "prompt"),            # > KV pool
        ({"params": greedy(max_tokens=60)}, ContextLengthError, "max_tokens"),     # > context
        ({"params": greedy(max_tokens=44)}, ContextLengthError, "max_tokens"),     # > KV pool
        ({"prompt_token_ids": []}, InvalidRequestError, "prompt_token_ids"),
        ({"prompt_token_ids": [1, 64]}, InvalidRequestError, "prompt_token_ids"),  # vocab 64
        ({"prompt": "hi"}, InvalidRequestError, "prompt"),                         # both given
        ({"prompt_token_ids": None}, InvalidRequestError, "prompt"),               # neither
        ({"params": greedy(stop=["x"])}, InvalidRequestError, "stop"),             # no tokenizer
        ({"priority": "high"}, InvalidRequestError, "priority"),
        ({"request_id": ""}, InvalidRequestError, "request_id"),
    ],
)
def test_bad_request_raises_typed_error_naming_the_field(engine, overrides, error, field):
    with pytest.raises(error) as info:
        engine.add_request(make_generate_request(**overrides))
    assert info.value.field == field
    assert not engine.has_unfinished()


@pytest.mark.parametrize(
    "params,field",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"logprobs": 21}, "logprobs"),
        ({"seed": -1}, "seed"),
        ({"n": 0}, "n"),
    ],
)
def test_out_of_range_sampling_values(params, field):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**params)
    assert info.value.field == field


def test_duplicate_request_id(engine):
    engine.add_request(make_generate_request(request_id="dup"))
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request(make_generate_request(request_id="dup"))
    assert info.value.field == "request_id"
    engine.abort("dup")
    assert engine.kv.num_used_blocks == 0


def test_max_tokens_none_runs_to_the_smaller_of_context_and_pool(engine):
    req = engine.add_request(make_generate_request(params=greedy(max_tokens=None), prompt_token_ids=[1] * 10))
    assert req.max_tokens == 38  # 48 KV tokens - 10 prompt
