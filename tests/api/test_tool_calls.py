"""Tool calls with the official ``openai`` client (issue 24, item 2) through the session's Ray
Serve app, on both engines (``tiny-llama`` native, ``tiny-llama-vllm`` on vLLM; the same random
checkpoint). Named and required tool choices are enforced by constrained decoding, so the
arguments validate although the model is random."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field


pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.ray]


class Weather(BaseModel):
    city: str = Field(max_length=12)
    days: int = Field(ge=1, le=7)
    unit: Literal["c", "f"]


class Alarm(BaseModel):
    hour: int = Field(ge=0, le=23)
    label: str = Field(max_length=8)


def tool(name: str, model: type[BaseModel]) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"{name} tool",
                                             "parameters": model.model_json_schema()}}


TOOLS = [tool("get_weather", Weather), tool("set_alarm", Alarm)]
SCHEMAS = {"get_weather": Weather, "set_alarm": Alarm}
MESSAGES = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
async def client(serve_app):
    async with openai.AsyncOpenAI(api_key=serve_app.api_key, base_url=serve_app.openai_base, max_retries=0,
                                  timeout=300) as c:
        yield c


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


async def test_named_tool_choice_always_validates_24_seeds(client, model):
    async def one(seed):
        r = await client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS,
                                                 tool_choice=named("get_weather"), seed=seed, temperature=1.0,
                                                 max_completion_tokens=200)
        return r.choices[0]

    choices = await asyncio.wait_for(asyncio.gather(*(one(seed) for seed in range(24))), 300)
    for c in choices:
        assert c.finish_reason == "tool_calls" and c.message.content is None
        (call,) = c.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        Weather.model_validate_json(call.function.arguments)
    assert len({c.message.tool_calls[0].function.arguments for c in choices}) > 1  # random model, varied output


async def _streamed(client, **kw) -> tuple[str, dict, str]:
    """(content, {index: (id, name, arguments)}, finish_reason) summed over a stream."""
    content, calls, finish = "", {}, None
    stream = await client.chat.completions.create(stream=True, **kw)
    async for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                cid, name, args = calls.get(d.index, (None, None, ""))
                calls[d.index] = (d.id or cid, (d.function.name if d.function else None) or name,
                                  args + ((d.function.arguments or "") if d.function else ""))
            finish = c.finish_reason or finish
    return content, calls, finish


@pytest.mark.parametrize("choice", ["named", "required"])
async def test_stream_concatenates_to_the_unary_result(client, model, choice):
    tool_choice = named("set_alarm") if choice == "named" else "required"
    kw = dict(model=model, messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice, seed=11, temperature=1.0,
              max_completion_tokens=300)
    unary = (await client.chat.completions.create(**kw)).choices[0]
    content, calls, finish = await _streamed(client, **kw)
    assert finish == unary.finish_reason == "tool_calls"
    want = [(c.function.name, c.function.arguments) for c in unary.message.tool_calls]
    assert [(name, args) for _, name, args in (calls[i] for i in sorted(calls))] == want
    assert all(cid.startswith("call_") for cid, _, _ in calls.values())
    assert (content or None) == unary.message.content


async def test_required_calls_validate_and_parallel_false_gives_one(client, model):
    async def one(seed, parallel):
        r = await client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                                 parallel_tool_calls=parallel, seed=seed, temperature=1.0,
                                                 max_completion_tokens=400)
        return r.choices[0]

    single = await asyncio.gather(*(one(seed, False) for seed in range(8)))
    for c in single:
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
        call = c.message.tool_calls[0]
        SCHEMAS[call.function.name].model_validate_json(call.function.arguments)
    many = await asyncio.gather(*(one(seed, True) for seed in range(8)))
    for c in many:
        if c.finish_reason == "length":  # a random model may list calls until the budget ends
            continue
        assert c.message.tool_calls and len({t.id for t in c.message.tool_calls}) == len(c.message.tool_calls)
        for call in c.message.tool_calls:
            SCHEMAS[call.function.name].model_validate_json(call.function.arguments)


async def test_tool_choice_none_and_tools_in_the_prompt(client, model):
    plain = await client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=4, seed=1)
    none = await client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                                max_completion_tokens=4, seed=1)
    assert none.choices[0].message.tool_calls is None and isinstance(none.choices[0].message.content, str)
    # The template's tools section is part of the prompt.
    assert none.usage.prompt_tokens > plain.usage.prompt_tokens + 20


async def test_a_conversation_with_tool_results_continues(client, model):
    first = await client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS,
                                                 tool_choice=named("get_weather"), seed=3, max_completion_tokens=200)
    msg = first.choices[0].message
    history = MESSAGES + [msg.model_dump(exclude_none=False), {
        "role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": json.dumps({"temp": 21})}]
    again = await client.chat.completions.create(model=model, messages=history, tools=TOOLS,
                                                 tool_choice=named("set_alarm"), seed=3, max_completion_tokens=200)
    Alarm.model_validate_json(again.choices[0].message.tool_calls[0].function.arguments)
    assert again.usage.prompt_tokens > first.usage.prompt_tokens


async def test_bad_tool_choice_is_a_400_naming_it(client, model):
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice=named("nope"))
    assert err.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=model, messages=MESSAGES, tool_choice="required")
    assert err.value.body["param"] == "tool_choice"
