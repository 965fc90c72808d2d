"""Client-visible fields on the real tiny model with the official ``openai`` client (issue 24,
item 4): chat logprobs streamed equal to unary, ``n`` with streaming and usage, seeds,
``max_completion_tokens``, ``user``, and ``echo`` on completions."""

from __future__ import annotations

import pytest

from tests.api.inprocess_openai import inprocess_openai

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("one_torch_thread")]
MESSAGES = [{"role": "user", "content": "count"}]
MODEL = "tiny"
KEY = "fs-fields-test"


@pytest.fixture(scope="module")
async def client(tiny_llama_path):
    """The official client over the real REST app and one in-process engine (no Ray)."""
    async with inprocess_openai(str(tiny_llama_path), MODEL, KEY) as c:
        yield c


async def test_chat_logprobs_streamed_equal_unary(client):
    kw = dict(model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=3, seed=5, temperature=1.0,
              max_completion_tokens=12, user="end-user-7")
    unary = await client.chat.completions.create(**kw)
    want = unary.choices[0].logprobs.content
    assert len(want) == unary.usage.completion_tokens == 12
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in want)
    assert "".join(t.token for t in want) == unary.choices[0].message.content
    got = []
    async for chunk in await client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            got += c.logprobs.content if c.logprobs else []
    assert [(t.token, t.bytes) for t in got] == [(t.token, t.bytes) for t in want]
    assert [t.logprob for t in got] == pytest.approx([t.logprob for t in want], abs=1e-4)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_n_with_streaming_and_usage_equals_unary(client, endpoint):
    if endpoint == "chat":
        create, kw = client.chat.completions.create, dict(messages=MESSAGES, max_completion_tokens=8)
        text = lambda c: c.message.content  # noqa: E731
        delta = lambda c: c.delta.content or ""  # noqa: E731
    else:
        create, kw = client.completions.create, dict(prompt="def f(", max_tokens=8)
        text = lambda c: c.text  # noqa: E731
        delta = lambda c: c.text  # noqa: E731
    kw.update(model=MODEL, n=3, seed=9, temperature=1.0)
    unary = await create(**kw)
    texts = [text(c) for c in sorted(unary.choices, key=lambda c: c.index)]
    assert len(set(texts)) > 1  # choice i uses seed + i
    got, usage = [""] * 3, None
    async for chunk in await create(stream=True, stream_options={"include_usage": True}, **kw):
        for c in chunk.choices:
            got[c.index] += delta(c)
        usage = chunk.usage or usage
    assert got == texts
    assert usage.completion_tokens == unary.usage.completion_tokens == 24
    assert usage.prompt_tokens == unary.usage.prompt_tokens


async def test_echo_on_the_real_model(client):
    plain = await client.completions.create(model=MODEL, prompt="import os", max_tokens=6, seed=2, temperature=0)
    echoed = await client.completions.create(model=MODEL, prompt="import os", max_tokens=6, seed=2, temperature=0,
                                             echo=True)
    assert echoed.choices[0].text == "import os" + plain.choices[0].text
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens
