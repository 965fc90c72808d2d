"""Deterministic continuation: a request resubmitted with its first k output tokens
(``GenerateRequest.resume_token_ids``) continues exactly as the uninterrupted run -- tokens
and text -- for greedy and seeded sampling, penalties and a grammar (issue 23, item 5)."""

from __future__ import annotations

import random

import pytest

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.core.llm_engine import LLMEngine
from fleetserve.engine.core.sampler import position_seed
from fleetserve.engine.protocol import GenerateRequest
from fleetserve.engine.sampling_params import SamplingParams, StructuredOutput
from fleetserve.errors import InvalidRequestError
from tests.engine.factories import make_byte_tokenizer, make_engine, make_generate_request, make_runner, run_to_completion

N = 24


def _run(engine, requests: list[GenerateRequest]) -> dict[str, tuple[list[int], str, str]]:
    for r in requests:
        engine.add_request(r)
    streams = run_to_completion(engine)
    assert engine.kv.num_used_blocks == 0 or engine.config.enable_prefix_caching
    return {rid: ([t for o in outs for t in o.token_ids_delta], "".join(o.text_delta for o in outs),
                  outs[-1].finish_reason) for rid, outs in streams.items()}


def _split_check(engine, prompt: list[int], params: SamplingParams, cuts: list[int]) -> None:
    """The whole run, then for each cut k a continuation from its first k tokens: the
    first-k text (as streamed one token per output) plus the continuation's equals the whole."""
    whole_ids, whole_text, reason = _run(engine, [GenerateRequest("whole", params, prompt_token_ids=prompt)])["whole"]
    assert len(whole_ids) == params.max_tokens and reason == "length"
    engine.add_request(GenerateRequest("head", params, prompt_token_ids=prompt))
    head_texts = [o.text_delta for o in run_to_completion(engine)["head"]]  # one output per token
    for k in cuts:
        cont = GenerateRequest(f"cont{k}", params, prompt_token_ids=prompt, resume_token_ids=whole_ids[:k])
        ids, text, reason = _run(engine, [cont])[f"cont{k}"]
        assert whole_ids[:k] + ids == whole_ids, f"tokens differ after a cut at {k}"
        assert "".join(head_texts[:k]) + text == whole_text, f"text differs after a cut at {k}"
        assert reason == "length" and len(ids) == params.max_tokens - k


@pytest.fixture(scope="module")
def llama(tiny_llama_path):
    return LLMEngine(EngineConfig(model=str(tiny_llama_path), max_model_len=512, num_kv_blocks=256, max_num_seqs=16))


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True),
    SamplingParams(temperature=1.0, seed=1234, max_tokens=N, ignore_eos=True),
    SamplingParams(temperature=0.8, top_p=0.9, top_k=40, seed=7, max_tokens=N, ignore_eos=True),
    SamplingParams(temperature=1.0, seed=99, frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.2,
                   max_tokens=N, ignore_eos=True),
], ids=["greedy", "seeded", "seeded-top-p-k", "seeded-penalties"])
def test_continuation_equals_the_uninterrupted_run(llama, params):
    prompt = llama.tokenizer.encode("def resume(stream, tokens):\n    ")
    _split_check(llama, prompt, params, cuts=[1, 7, N - 1])


@pytest.mark.usefixtures("one_torch_thread")
def test_continuation_in_a_busy_batch_and_of_a_grammar(llama):
    """The continuation shares its batch with other requests and fast-forwards its grammar."""
    schema = StructuredOutput.json_schema({"type": "object", "properties": {"a": {"type": "integer"},
                                           "b": {"type": "string", "maxLength": 8}}, "required": ["a", "b"]})
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=40, structured=schema)
    prompt = llama.tokenizer.encode("JSON please:")
    whole_ids, whole_text, _ = _run(llama, [GenerateRequest("g", params, prompt_token_ids=prompt)])["g"]
    assert len(whole_ids) > 4
    k = len(whole_ids) // 2
    noise = [GenerateRequest(f"n{i}", SamplingParams(temperature=1.0, max_tokens=30), prompt=f"import x{i}")
             for i in range(5)]
    cont = GenerateRequest("c", params, prompt_token_ids=prompt, resume_token_ids=whole_ids[:k])
    out = _run(llama, noise + [cont])["c"]
    assert whole_ids[:k] + out[0] == whole_ids
    assert whole_text.endswith(out[1]) and out[1]
    with pytest.raises(InvalidRequestError, match="grammar rejects"):
        llama.add_request(GenerateRequest("bad", params, prompt_token_ids=prompt,
                                          resume_token_ids=llama.tokenizer.encode("not json at all")))
    assert not llama.has_unfinished()


def test_text_resumes_inside_split_characters_and_stop_prefixes():
    """Byte tokens: multi-byte characters and stop-string prefixes are held back across the
    cut exactly as in the uninterrupted stream (fake runner, random cuts)."""
    tok = make_byte_tokenizer()
    rng = random.Random(3)
    # Every letter starts a stop string (held back often); none completes (two NULs).
    stops = [c + "\x00\x00" for c in "aeiourstnl"]
    for trial in range(4):
        engine = make_engine(make_runner(block_size=4, vocab_size=256, seed=trial), tokenizer=tok)
        prompt = tok.encode(f"caf\u00e9 {trial}")
        params = SamplingParams(temperature=1.0, seed=trial, max_tokens=40, stop=stops)
        _split_check(engine, prompt, params, cuts=sorted(rng.sample(range(1, 40), 5)))


def test_resume_token_ids_are_validated():
    engine = make_engine()
    with pytest.raises(InvalidRequestError, match="resume_token_ids") as e:
        engine.add_request(make_generate_request(resume_token_ids=[1, 10_000]))
    assert e.value.field == "resume_token_ids"
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        engine.add_request(make_generate_request(resume_token_ids=[1] * 8))  # greedy(): max_tokens=8
    assert not engine.has_unfinished()


def test_position_seeds_are_distinct_and_63_bit():
    seeds = {position_seed(s, p) for s in range(50) for p in range(200)}
    assert len(seeds) == 50 * 200
    assert all(0 <= x < 2**63 for x in seeds)
