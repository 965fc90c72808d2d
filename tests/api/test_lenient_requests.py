"""What the official client and frameworks send must not bounce (issue 24, items 3 and 4):
fields OpenAI or vLLM accept are accepted (and ignored or honoured), unknown fields are
ignored as vLLM ignores them, and only what cannot be honoured is a 400 naming the field.
Also ``echo`` on completions and ``/tokenize`` + ``/detokenize``."""

from __future__ import annotations

import json

import pytest

from fleetserve.engine.tokenizer import load_tokenizer
from tests.api.rest_harness import AUTH, MODEL, ScriptedClient, make_rest, sse_events
from tests.api.test_hostile_input import assert_openai_error
from tests.api.test_truncation import COMPLETE

CMPL, CHAT = "/v1/completions", "/v1/chat/completions"
SCRIPT_TEXT = "abac"  # COMPLETE streams a, b, a, c

# What openai-python, LangChain and friends put in bodies, echoed assistant turns included.
CLIENT_FIELDS = dict(
    metadata={"trace": "x"}, store=False, service_tier="auto", parallel_tool_calls=True, reasoning_effort="low",
    prediction={"type": "content", "content": "abc"}, modalities=["text"], logit_bias={"5": 2.5, "17": -100},
    user="u-1", seed=3, prompt_cache_key="k", verbosity="low", safety_identifier="s",
    skip_special_tokens=True, spaces_between_special_tokens=False, priority=5, request_id="mine",
    min_tokens=0, use_beam_search=False, best_of=1, chat_template_kwargs={"enable_thinking": False},
    some_future_field={"nested": [1, 2]},
)
HISTORY = [
    {"role": "developer", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
    {"role": "assistant", "content": "hello", "refusal": None, "audio": None, "function_call": None,
     "annotations": [], "tool_calls": []},
    {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "clock", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "12:00"},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
    {"role": "user", "content": "again"},
]


@pytest.fixture
def rest(tiny_llama_path):
    return make_rest(ScriptedClient(COMPLETE), tiny_llama_path)


async def _post(rest, path, body):
    async with rest.client() as c:
        return await c.post(path, json=body, headers=AUTH)


async def test_client_and_vllm_fields_are_accepted(rest):
    r = await _post(rest, CHAT, {"model": MODEL, "messages": HISTORY, **CLIENT_FIELDS})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == SCRIPT_TEXT
    r = await _post(rest, CMPL, {"model": MODEL, "prompt": "hi", "suffix": None, **CLIENT_FIELDS})
    assert r.status_code == 200, r.text


REFUSED = [
    (CMPL, {"suffix": "tail"}, "suffix"),
    (CHAT, {"use_beam_search": True}, "use_beam_search"),
    (CHAT, {"min_tokens": 3}, "min_tokens"),
    (CMPL, {"best_of": 3}, "best_of"),
    (CHAT, {"modalities": ["text", "audio"]}, "modalities"),
    (CHAT, {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    (CHAT, {"functions": [{"name": "f"}]}, "functions"),
    (CHAT, {"chat_template": "{{ messages }}"}, "chat_template"),
    (CHAT, {"allowed_token_ids": [1, 2]}, "allowed_token_ids"),
    (CMPL, {"logit_bias": {"x": 1}}, "logit_bias"),
    (CMPL, {"logit_bias": {"5": 101}}, "logit_bias"),
    (CMPL, {"logit_bias": {"999999": 1}}, "logit_bias"),  # past the vocabulary
    (CMPL, {"echo": True, "logprobs": 1}, "echo"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0"),
    (CHAT, {"messages": [{"role": "user", "content": None}]}, "messages.0"),
]


@pytest.mark.parametrize("path,fields,param", REFUSED, ids=[f"{p[1:]}-{f}" for p, _, f in REFUSED])
async def test_what_cannot_be_honoured_is_a_400_naming_the_field(rest, path, fields, param):
    base = {"model": MODEL, "prompt": "hi"} if path == CMPL else {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    r = await _post(rest, path, {**base, **fields})
    assert_openai_error(r, 400, param)


@pytest.mark.parametrize("n", [1, 2])
async def test_echo_puts_the_prompt_before_each_choice(rest, n):
    unary = await _post(rest, CMPL, {"model": MODEL, "prompt": ["one", "two"], "echo": True, "n": n})
    texts = [c["text"] for c in unary.json()["choices"]]
    assert texts == [p + SCRIPT_TEXT for p in ("one", "two") for _ in range(n)]
    streamed = await _post(rest, CMPL, {"model": MODEL, "prompt": ["one", "two"], "echo": True, "n": n, "stream": True,
                                        "stream_options": {"include_usage": True}})
    got = [""] * (2 * n)
    events = sse_events(streamed.text)
    for e in events[:-1]:
        for c in json.loads(e).get("choices", []):
            got[c["index"]] += c["text"]
    assert got == texts
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 4 * 2 * n  # echo is not generated


async def test_tokenize_and_detokenize_like_vllm(rest, tiny_llama_path):
    hf = load_tokenizer(str(tiny_llama_path))
    async with rest.client() as c:
        t = (await c.post("/tokenize", json={"model": MODEL, "prompt": "def f(x):", "return_token_strs": True},
                          headers=AUTH)).json()
        chat = (await c.post("/tokenize", json={"model": MODEL, "messages": HISTORY[:2]}, headers=AUTH)).json()
        d = (await c.post("/detokenize", json={"model": MODEL, "tokens": t["tokens"]}, headers=AUTH)).json()
        no_key = await c.post("/tokenize", json={"model": MODEL, "prompt": "x"})
        bad = await c.post("/detokenize", json={"model": MODEL, "tokens": [10**7]}, headers=AUTH)
        both = await c.post("/tokenize", json={"model": MODEL, "prompt": "x", "messages": HISTORY[:1]}, headers=AUTH)
        unknown = await c.post("/tokenize", json={"model": "nope", "prompt": "x"}, headers=AUTH)
    assert t["tokens"] == hf.encode("def f(x):") and t["count"] == len(t["tokens"]) and t["max_model_len"] > 0
    assert "".join(t["token_strs"]) == "def f(x):"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert chat["tokens"] == hf.apply_chat_template(messages)
    assert d["prompt"] == "def f(x):"
    assert_openai_error(no_key, 401, None)
    assert_openai_error(bad, 400, "tokens")
    assert_openai_error(both, 400, "prompt")
    assert_openai_error(unknown, 404, "model")
