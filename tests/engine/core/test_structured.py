"""Structured-output specs and the compiled-grammar cache (no model: a byte tokenizer)."""

import pickle

import pytest
import torch

from fleetserve.engine.core.structured import GrammarBatch, GrammarCompiler
from fleetserve.engine.sampling_params import SamplingParams, StructuredOutput
from fleetserve.errors import InvalidRequestError
from tests.engine.factories import make_byte_tokenizer

VOCAB = 260  # model vocab padded past the tokenizer's 257 ids
EOS = 256


@pytest.fixture(scope="module")
def compiler():
    tok = make_byte_tokenizer()
    return GrammarCompiler(tok.hf, VOCAB, [EOS], cache_size=2)


def schema(**props) -> StructuredOutput:
    return StructuredOutput.json_schema({"type": "object", "properties": props, "required": list(props)})


def drive(compiler, spec, text: str):
    """Feed ``text`` byte by byte; returns the state (raises if a byte is rejected)."""
    state = compiler.matcher(spec)
    for b in text.encode():
        assert state.accept(b), f"rejected {chr(b)!r} in {text!r}"
    return state


def test_equal_specs_compile_once_and_the_cache_is_bounded(compiler):
    a, b, c = schema(x={"type": "integer"}), schema(y={"type": "string"}), StructuredOutput("regex", "[ab]+")
    before = compiler.misses
    compiler.compile(a)
    compiler.compile(schema(x={"type": "integer"}))  # an equal spec built again
    assert compiler.misses == before + 1 and compiler.hits >= 1
    compiler.compile(b)
    compiler.compile(c)  # evicts a (size 2)
    compiler.compile(a)
    assert compiler.misses == before + 4
    assert len(compiler._cache) == 2


@pytest.mark.parametrize("keyword,sub", [
    ("not", {"not": {"type": "string"}}),
    ("uniqueItems", {"type": "array", "uniqueItems": True}),
    ("if", {"properties": {"a": {"if": {"type": "string"}, "then": {}}}}),
    ("propertyNames", {"items": {"propertyNames": {"maxLength": 3}}}),
])
def test_unsupported_schema_keyword_is_named(keyword, sub):
    with pytest.raises(InvalidRequestError) as info:
        StructuredOutput.json_schema(sub)
    assert repr(keyword) in str(info.value) and info.value.field == "response_format"


def test_property_named_like_a_keyword_is_fine():
    StructuredOutput.json_schema({"type": "object", "properties": {"not": {"type": "string"}, "if": {}}})


def test_remote_ref_is_refused():
    with pytest.raises(InvalidRequestError, match="remote"):
        StructuredOutput.json_schema({"$ref": "https://example.com/s.json"})


@pytest.mark.parametrize("spec,fragment", [
    (StructuredOutput("regex", "(ab"), "regex cannot be compiled"),
    (StructuredOutput("grammar", "root ::= missing"), "grammar cannot be compiled"),
    (StructuredOutput("json_schema", '{"type": "strin"}'), "strin"),
])
def test_uncompilable_spec_is_a_400_naming_the_problem(compiler, spec, fragment):
    with pytest.raises(InvalidRequestError, match=fragment) as info:
        compiler.compile(spec)
    assert info.value.field == "response_format"


@pytest.mark.parametrize("kwargs", [
    dict(kind="xml"), dict(kind="choice"), dict(kind="regex"), dict(kind="choice", choices=("a", "")),
])
def test_malformed_specs(kwargs):
    with pytest.raises(InvalidRequestError):
        StructuredOutput(**kwargs)


def test_spec_pickles_inside_sampling_params():
    params = SamplingParams(structured=StructuredOutput("choice", choices=["yes", "no"]))
    again = pickle.loads(pickle.dumps(params))
    assert again.structured == params.structured and hash(again.structured) == hash(params.structured)


def test_matcher_follows_the_schema_and_terminates_on_eos(compiler):
    state = drive(compiler, schema(n={"type": "integer"}), '{"n": 12}')
    assert not state.accept(ord("x"))
    assert state.accept(EOS) and state.is_terminated


def test_bounded_strings_refuse_control_characters(compiler):
    # xgrammar 0.2.9 lets raw control characters into maxLength strings; we repair that.
    state = drive(compiler, schema(s={"type": "string", "maxLength": 4}), '{"s": "a')
    assert not state.accept(0x1C)
    assert state.accept(ord("b"))


def test_choice_and_mask_rows(compiler):
    spec = StructuredOutput("choice", choices=("yes", "no"))
    state = compiler.matcher(spec)
    logits = torch.zeros(3, VOCAB)
    GrammarBatch.of([None, state, None]).apply(logits)
    allowed = (logits[1] > -1e30).nonzero().flatten().tolist()
    assert allowed == [ord("n"), ord("y")]
    assert torch.all(logits[0] == 0) and torch.all(logits[2] == 0)  # rows without a grammar untouched
    assert GrammarBatch.of([None, None]) is None
