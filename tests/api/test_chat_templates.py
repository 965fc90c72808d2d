"""The ingress renders chat templates as transformers' ``apply_chat_template`` does (issue 24,
item 3): Llama-3.1- and Qwen2.5-style templates with tools, tool calls, tool results,
``strftime_now``, ``tojson(indent=4)`` and ``raise_exception``, and the tiny checkpoint's own
template, compared text for text and id for id with transformers on the same messages."""

from __future__ import annotations

import json

import pytest

from fleetserve.api.openai_models import ChatMessage
from fleetserve.api.prompts import PromptRenderer
from fleetserve.errors import InvalidRequestError
from tests.api.chat_templates import LLAMA3_STYLE, QWEN25_STYLE

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city (é, <b>&</b>).",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}

# As the API receives them (OpenAI shapes: arguments as JSON text, refusal echoed back).
WIRE = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Zürich for 2 days?"},
    {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Zürich", "days": 2}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "<clear>"}'},
    {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "tomorrow?"}]},
]


def template_messages() -> list[dict]:
    return [ChatMessage.model_validate(m).as_template_dict() for m in WIRE]


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_llama_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama_path))


def renderer(path, template: str) -> PromptRenderer:
    base = PromptRenderer.from_checkpoint(str(path))
    return PromptRenderer(base._tok, template, base._special)


@pytest.mark.parametrize("template", [LLAMA3_STYLE, QWEN25_STYLE, None], ids=["llama3", "qwen2.5", "tiny"])
@pytest.mark.parametrize("tools", [None, [WEATHER, CLOCK]], ids=["no-tools", "tools"])
@pytest.mark.parametrize("gen", [True, False], ids=["gen-prompt", "no-gen-prompt"])
def test_rendering_equals_transformers(hf_tokenizer, tiny_llama_path, template, tools, gen):
    messages = template_messages()
    ours = renderer(tiny_llama_path, template or hf_tokenizer.chat_template)
    kwargs = dict(tools=tools, add_generation_prompt=gen)
    if template is not None:
        kwargs["chat_template"] = template
    want = hf_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    got = ours.render_chat_text(messages, tools=tools, add_generation_prompt=gen)
    assert got == want
    want_ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    assert ours.render_chat(messages, tools=tools, add_generation_prompt=gen) == list(want_ids)
    if tools:
        assert json.dumps(WEATHER["function"]["description"], ensure_ascii=False)[1:-1] in got  # tojson: no escaping
        assert "get_weather" in got and "Zürich" in got


def test_strftime_now_and_template_kwargs(tiny_llama_path, hf_tokenizer):
    ours = renderer(tiny_llama_path, LLAMA3_STYLE)
    messages = [{"role": "user", "content": "hi"}]
    fixed = ours.render_chat_text(messages, template_kwargs={"date_string": "01 Jan 2030"})
    assert "Today Date: 01 Jan 2030" in fixed
    assert fixed == hf_tokenizer.apply_chat_template(messages, chat_template=LLAMA3_STYLE, tokenize=False,
                                                     add_generation_prompt=True, date_string="01 Jan 2030")
    from datetime import datetime

    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}" in ours.render_chat_text(messages)


def test_raise_exception_is_a_400_with_the_template_message(tiny_llama_path):
    ours = renderer(tiny_llama_path, LLAMA3_STYLE)
    two_calls = [{"role": "user", "content": "x"},
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": {}}}]}]
    with pytest.raises(InvalidRequestError, match="only supports single tool-calls") as err:
        ours.render_chat(two_calls)
    assert err.value.field == "messages"


def test_tiny_template_renders_plain_chats_as_before(tiny_llama_path):
    """The tools section must not change the prompt of a conversation without tools."""
    ours = PromptRenderer.from_checkpoint(str(tiny_llama_path))
    text = ours.render_chat_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert text == "<|bos|><|system|>\ns<|end|>\n<|user|>\nu<|end|>\n<|assistant|>\n"
