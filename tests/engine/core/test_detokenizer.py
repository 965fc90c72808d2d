"""Incremental detokenization: UTF-8 safety and stop strings that span tokens."""

import pytest

from fleetserve.engine.core.detokenizer import IncrementalDetokenizer
from fleetserve.engine.sampling_params import SamplingParams
from tests.engine.factories import make_byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_byte_tokenizer()


def stream(tok, text, **params):
    """Feed ``text`` byte by byte; returns (chunks, stop string or None)."""
    detok = IncrementalDetokenizer(tok, tok.encode("prompt: "), SamplingParams(**params))
    chunks = []
    for t in tok.encode(text):
        stop = detok.add_token(t)
        if stop is not None:
            chunks.append(detok.pull_delta(True))
            return chunks, stop
        chunks.append(detok.pull_delta(False))
    chunks.append(detok.pull_delta(True))
    return chunks, None


def test_multibyte_characters_never_emit_broken_utf8(tok):
    text = "héllo wörld € 😀 日本語"
    chunks, _ = stream(tok, text)
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)
    # The 4-byte emoji arrives as a single chunk once its last byte is in.
    assert "😀" in chunks


def test_stop_string_split_across_tokens_is_never_emitted(tok):
    chunks, stop = stream(tok, "abc STOP def", stop=["STOP"])
    assert stop == "STOP"
    assert "".join(chunks) == "abc "
    assert not any("S" in c for c in chunks)


def test_partial_stop_prefix_is_released_when_it_stops_matching(tok):
    chunks, stop = stream(tok, "a STOx b", stop=["STOP"])
    assert stop is None
    assert "".join(chunks) == "a STOx b"
    # "STO" was held back until "x" showed it was not the stop string.
    assert any(c.startswith("STOx") for c in chunks)


def test_include_stop_str_in_output(tok):
    chunks, stop = stream(tok, "x END y", stop=["END"], include_stop_str_in_output=True)
    assert "".join(chunks) == "x END"


def test_earliest_of_several_stop_strings_wins_with_multibyte(tok):
    chunks, stop = stream(tok, "日本 → über alles", stop=["alles", "→"])
    assert stop == "→"
    assert "".join(chunks) == "日本 "
