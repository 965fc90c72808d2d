"""The ``auto`` tool choice reads Hermes ``<tool_call>`` blocks (issue 24, item 2): the
decoder on its own over every way a stream can split the text, then the REST app with a
scripted engine stream and the official ``openai`` client, streamed and unary."""

from __future__ import annotations

import random

import httpx
import openai
import pytest

from fleetserve.api.tool_calls import ToolCallDecoder, ToolCallEvent, ToolPlan, assemble
from fleetserve.engine.protocol import RequestOutput
from tests.api.rest_harness import MODEL, TENANT_KEY, ScriptedClient, make_rest

TEXT = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo <N>"}}\n</tool_call>'
        '<tool_call>{"name": "clock", "arguments": {}}</tool_call> done <tool_ca')
WANT_CONTENT = "Let me check.  done <tool_ca"
WANT_CALLS = [("get_weather", '{"city": "Oslo <N>"}'), ("clock", "{}")]
AUTO = ToolPlan("auto", ("get_weather", "clock"), parser="hermes")


def decode(pieces: list[str]) -> tuple:
    dec = ToolCallDecoder(AUTO)
    events = [e for p in pieces for e in dec.feed(p)] + dec.finish()
    content, calls = assemble(events)
    return content, [(c.name, c.arguments) for c in calls], dec.calls


def test_hermes_blocks_become_calls_however_the_text_is_split():
    rng = random.Random(0)
    assert decode([TEXT]) == (WANT_CONTENT, WANT_CALLS, 2)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(1, 30)))
        pieces = [TEXT[a:b] for a, b in zip([0] + cuts, cuts + [len(TEXT)])]
        assert decode(pieces) == (WANT_CONTENT, WANT_CALLS, 2), pieces
    assert decode(list(TEXT)) == (WANT_CONTENT, WANT_CALLS, 2)  # one character at a time


def test_text_that_only_looks_like_a_tag_stays_content():
    broken = 'a <tool_call>{"name": 1}</tool_call> b <tool_call>{"nam'
    assert decode([broken]) == (broken, [], 0)
    assert decode(["no calls at all <"]) == ("no calls at all <", [], 0)


def test_content_is_held_back_only_while_it_may_start_a_tag():
    dec = ToolCallDecoder(AUTO)
    assert dec.feed("hello <tool") == ["hello "]
    assert dec.feed("box>") == ["<toolbox>"]
    first = dec.feed('<tool_call>{"name": "clock", "arguments": {}}</tool_call>')
    assert [type(e) for e in first] == [ToolCallEvent] and first[0].id.startswith("call_")


def outputs(text: str, size: int) -> list[RequestOutput]:
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    outs = [RequestOutput("r", p, [i + 1], completion_tokens=i + 1) for i, p in enumerate(pieces)]
    outs[-1].finished, outs[-1].finish_reason = True, "stop"
    return outs


@pytest.fixture
def make_client(tiny_llama_path):
    def make(script) -> openai.AsyncOpenAI:
        rest = make_rest(ScriptedClient(script), tiny_llama_path)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=rest.app), base_url="http://fleetserve")
        return openai.AsyncOpenAI(api_key=TENANT_KEY, base_url="http://fleetserve/v1", http_client=http,
                                  max_retries=0)
    return make


TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("get_weather", "clock")]
KW = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=TOOLS)


@pytest.mark.parametrize("size", [1, 7, 1000])
async def test_auto_unary_and_streamed_calls_through_the_client(make_client, size):
    client = make_client(outputs(TEXT, size))
    unary = (await client.chat.completions.create(**KW)).choices[0]
    assert unary.finish_reason == "tool_calls" and unary.message.content == WANT_CONTENT
    assert [(t.function.name, t.function.arguments) for t in unary.message.tool_calls] == WANT_CALLS
    content, calls, finish = "", {}, None
    async for chunk in await client.chat.completions.create(stream=True, **KW):
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                name, args = calls.get(d.index, ("", ""))
                calls[d.index] = (name + (d.function.name or ""), args + (d.function.arguments or ""))
            finish = c.finish_reason or finish
    assert (content, [calls[i] for i in sorted(calls)], finish) == (WANT_CONTENT, WANT_CALLS, "tool_calls")


async def test_without_tools_or_with_none_the_text_is_content(make_client):
    client = make_client(outputs(TEXT, 5))
    for kw in (dict(model=MODEL, messages=KW["messages"]), dict(KW, tool_choice="none")):
        c = (await client.chat.completions.create(**kw)).choices[0]
        assert c.message.content == TEXT and c.message.tool_calls is None and c.finish_reason == "stop"


def test_a_model_without_a_parser_leaves_auto_output_as_content():
    from fleetserve.api.openai_models import ChatCompletionRequest
    from fleetserve.api.tool_calls import plan_tools

    req = ChatCompletionRequest.model_validate(dict(KW))
    plan, constraint = plan_tools(req, parser=None)
    assert (plan.reads_calls, constraint) == (False, None)
    plan, constraint = plan_tools(req, parser="hermes")
    assert (plan.mode, plan.parser, constraint) == ("auto", "hermes", None)
    named = ChatCompletionRequest.model_validate(dict(KW, tool_choice={"type": "function", "function": {"name": "clock"}}))
    plan, constraint = plan_tools(named, parser=None)
    assert plan.mode == "named" and constraint.kind == "json_schema"  # needs no parser


def test_required_output_cut_short_stays_content():
    plan = ToolPlan("required", ("clock",))
    for text in ('[{"name": "clock", "argu', '[{"nom": 1}]', "{}"):
        dec = ToolCallDecoder(plan)
        assert dec.feed(text) == [] and dec.finish() == [text] and dec.calls == 0
    dec = ToolCallDecoder(plan)
    dec.feed('[{"name": "clock", "arguments": {"tz": "UTC"}}]')
    (call,) = dec.finish()
    assert (call.name, call.arguments, dec.calls) == ("clock", '{"tz": "UTC"}', 1)
