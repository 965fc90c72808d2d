"""Structured outputs with the official ``openai`` client through the session's Ray Serve app
(ingress, router, tenancy, streaming), on both engines: each test runs against ``tiny-llama``
(native) and ``tiny-llama-vllm`` (the same random checkpoint on vLLM). The constraint, not the
model, makes the outputs valid."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Literal

import openai
import pytest
from pydantic import BaseModel, Field


pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.ray]


class Item(BaseModel):
    name: str = Field(max_length=16)
    count: int = Field(ge=0, le=1000)
    kind: Literal["tool", "part"]
    tags: list[Annotated[str, Field(max_length=12)]] = Field(max_length=3)



@pytest.fixture(scope="module")
async def client(serve_app):
    async with openai.AsyncOpenAI(api_key=serve_app.api_key, base_url=serve_app.openai_base, max_retries=0,
                                  timeout=300) as c:
        yield c


async def test_parse_with_pydantic_model_50_of_50(client, model):
    async def one(seed):
        completion = await client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": f"item {seed}"}], response_format=Item,
            temperature=1.0, seed=seed, max_completion_tokens=400)
        return completion.choices[0].message.parsed

    parsed = await asyncio.wait_for(asyncio.gather(*(one(seed) for seed in range(50))), 300)
    assert all(isinstance(p, Item) for p in parsed)


async def test_json_object_stream_equals_unary(client, model):
    kw = dict(model=model, messages=[{"role": "user", "content": "an object"}], temperature=1.0, seed=7,
              max_completion_tokens=300, response_format={"type": "json_object"})
    unary = (await client.chat.completions.create(**kw)).choices[0]
    stream = await client.chat.completions.create(stream=True, **kw)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == unary.message.content
    if unary.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


async def test_completions_guided_choice_and_regex(client, model):
    choice = await client.completions.create(model=model, prompt="pick", max_tokens=20, seed=1,
                                             extra_body={"guided_choice": ["alpha", "beta"]})
    assert choice.choices[0].text in ("alpha", "beta")
    regex = await client.completions.create(model=model, prompt="code", max_tokens=20, seed=1,
                                            extra_body={"structured_outputs": {"regex": "[a-f]{4}"}})
    assert len(regex.choices[0].text) == 4 and set(regex.choices[0].text) <= set("abcdef")


async def test_unsupported_schema_keyword_is_a_400_naming_it(client, model):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError, match="uniqueItems"):
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                             response_format=bad)
