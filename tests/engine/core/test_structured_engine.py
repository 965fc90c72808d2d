"""Constrained decoding end to end on the real tiny checkpoint (random weights: the grammar,
not the model, makes the output valid)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.core.llm_engine import LLMEngine
from fleetserve.engine.protocol import GenerateRequest
from fleetserve.engine.sampling_params import SamplingParams, StructuredOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Item(BaseModel):
    """Every field bounded, so any path through the grammar ends well within max_tokens."""

    name: str = Field(max_length=16)
    count: int = Field(ge=0, le=1000)
    kind: Literal["tool", "part"]
    tags: list[Annotated[str, Field(max_length=12)]] = Field(max_length=3)


ITEM = StructuredOutput.json_schema(Item.model_json_schema())


@pytest.fixture(scope="module")
def engine(tiny_llama_path):
    return LLMEngine(EngineConfig(model=str(tiny_llama_path), max_model_len=2048, num_kv_blocks=1024, max_num_seqs=64))


def generate(engine, params_list, *, preempt_after: dict[str, int] | None = None) -> dict[str, tuple[str, list[int], str]]:
    """Run requests to completion; ``preempt_after[rid] = k`` preempts rid after its k-th token."""
    for i, params in enumerate(params_list):
        engine.add_request(GenerateRequest(f"s{i}", params, prompt=f"Give me JSON number {i}:"))
    text: dict[str, str] = {}
    ids: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    preempt_after = dict(preempt_after or {})
    while engine.has_unfinished():
        for out in engine.step():
            text[out.request_id] = text.get(out.request_id, "") + out.text_delta
            ids.setdefault(out.request_id, []).extend(out.token_ids_delta)
            if out.finished:
                reasons[out.request_id] = out.finish_reason
            elif len(ids[out.request_id]) == preempt_after.get(out.request_id):
                assert engine.preempt(out.request_id)
                del preempt_after[out.request_id]
    assert not preempt_after, "a planned preemption never happened"
    return {rid: (text[rid], ids[rid], reasons[rid]) for rid in text}


def test_50_seeded_sampled_requests_all_validate(engine):
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=400, structured=ITEM) for i in range(50)]
    results = generate(engine, params)
    assert len(results) == 50
    for text, _, reason in results.values():
        assert reason == "stop"
        Item.model_validate_json(text)


def test_json_object_is_valid_json_whenever_it_stops(engine):
    spec = StructuredOutput("json_object")
    results = generate(engine, [SamplingParams(temperature=1.0, seed=i, max_tokens=300, structured=spec) for i in range(20)])
    stopped = [text for text, _, reason in results.values() if reason == "stop"]
    # Strings are unbounded in a bare JSON object, so a random model can run out of tokens;
    # everything that ended by the grammar is an object.
    assert len(stopped) >= 10
    assert all(isinstance(json.loads(t), dict) for t in stopped)


def test_regex_and_choice_hold(engine):
    regex = StructuredOutput("regex", r"[A-Z]{3}-[0-9]{2,4}")
    choice = StructuredOutput("choice", choices=("red", "green", "blue sky"))
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=50, structured=regex) for i in range(5)]
    params += [SamplingParams(temperature=1.0, seed=i, max_tokens=50, structured=choice) for i in range(5)]
    results = generate(engine, params)
    for i in range(5):
        assert re.fullmatch(r"[A-Z]{3}-[0-9]{2,4}", results[f"s{i}"][0])
        assert results[f"s{i + 5}"][0] in choice.choices
        assert results[f"s{i + 5}"][2] == "stop"


def test_preempted_mid_json_equals_unpreempted_greedy(engine):
    params = [SamplingParams(temperature=0.0, max_tokens=400, structured=ITEM) for _ in range(3)]
    plain = generate(engine, params)
    preempted = generate(engine, params, preempt_after={"s0": 5, "s2": 12})
    assert engine.stats().num_preemptions >= 2
    assert preempted == plain
    for text, _, _ in plain.values():
        Item.model_validate_json(text)


def test_unconstrained_requests_share_the_batch_untouched(engine):
    free = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = generate(engine, [free])["s0"]
    mixed = generate(engine, [free, SamplingParams(temperature=0.0, max_tokens=400, structured=ITEM)])
    assert mixed["s0"] == alone
    Item.model_validate_json(mixed["s1"][0])
