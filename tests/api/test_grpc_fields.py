"""The gRPC API carries what REST gained (issue 24): structured outputs, tools, chat logprobs,
echo, max_completion_tokens, user, include_usage and LoRA adapters -- through a real
``grpc.aio`` server and client on loopback, over an in-process InferenceService and a real
in-thread engine on the tiny checkpoint (no Ray). REST over the same service is the oracle:
the same seed gives the same text through both edges."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import grpc
import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from fleetserve.api.adapters import AdapterCatalog, AdapterEntry, adapter_revision
from fleetserve.api.grpc import inference_pb2 as pb
from fleetserve.api.grpc import inference_pb2_grpc as pbg
from fleetserve.api.grpc.servicer import InferenceServicer
from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.api.inprocess_openai import EngineClient
from tests.tenants.factories import make_config, make_spec

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("one_torch_thread")]
MODEL, KEY, DENIED_KEY = "tiny", "fs-grpc-fields", "fs-grpc-no-lora"
AUTH = (("authorization", f"Bearer {KEY}"),)


class Item(BaseModel):
    name: str = Field(max_length=12)
    count: int = Field(ge=0, le=99)
    kind: Literal["tool", "part"]


class Weather(BaseModel):
    city: str = Field(max_length=10)
    days: int = Field(ge=1, le=7)


WEATHER = pb.Tool(name="get_weather", description="weather", parameters_json=json.dumps(Weather.model_json_schema()))
ALARM = pb.Tool(name="set_alarm", parameters_json=json.dumps({"type": "object", "properties": {
    "hour": {"type": "integer", "minimum": 0, "maximum": 23}}, "required": ["hour"], "additionalProperties": False}))


class Edges:
    def __init__(self, stub, http, service):
        self.stub, self.http, self.service = stub, http, service


@pytest.fixture(scope="module")
async def edges(tiny_llama_path, make_adapter):
    path = str(tiny_llama_path)
    engine = AsyncEngine.from_config(model=path, max_model_len=1024, num_kv_blocks=512, max_num_seqs=64,
                                     enable_lora=True, max_lora_rank=8)
    gatekeeper = TenantGatekeeper(make_config(make_spec(id="acme", key=KEY),
                                              make_spec(id="nolora", key=DENIED_KEY, allowed_adapters=[])),
                                  metrics_registry=CollectorRegistry())
    catalog = AdapterCatalog([MODEL])
    adapter = str(make_adapter(tiny_llama_path, seed=3))
    await catalog.put(AdapterEntry(MODEL, "a", adapter, adapter_revision(adapter), ("alias-a",)))
    service = InferenceService([ModelSpec(MODEL, path)], EngineClient(engine), gatekeeper, adapters=catalog)
    server = grpc.aio.server()
    pbg.add_InferenceServicer_to_server(InferenceServicer(service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_rest_app(service)), base_url="http://rest",
                             headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    try:
        yield Edges(pbg.InferenceStub(channel), http, service)
    finally:
        await http.aclose()
        await channel.close()
        await server.stop(None)
        await engine.shutdown()


def chat(content: str = "hello", **kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role="user", content=content)], **kw)


async def unary(edges, req, metadata=AUTH) -> pb.GenerateResponse:
    return await edges.stub.Generate(req, metadata=metadata, timeout=120)


async def stream(edges, req) -> list[pb.GenerateChunk]:
    return [c async for c in edges.stub.GenerateStream(req, metadata=AUTH, timeout=120)]


def summed(chunks) -> tuple[str, dict, str]:
    """(text, {call index: (name, arguments)}, finish reason) of choice 0 of a stream."""
    text, calls, finish = "", {}, ""
    for c in chunks:
        text += c.text
        for d in c.tool_calls:
            name, args = calls.get(d.index, ("", ""))
            calls[d.index] = (name + d.name, args + d.arguments)
        finish = c.finish_reason or finish
    return text, calls, finish


async def test_json_schema_output_validates_for_every_seed_and_matches_rest(edges):
    schema = pb.JsonSchema(name="item", schema_json=json.dumps(Item.model_json_schema()), strict=True)
    reqs = [chat(f"item {s}", seed=s, temperature=1.0, max_completion_tokens=200,
                 response_format=pb.ResponseFormat(type="json_schema", json_schema=schema)) for s in range(12)]
    out = await asyncio.wait_for(asyncio.gather(*(unary(edges, r) for r in reqs)), 300)
    for r in out:
        assert r.choices[0].finish_reason == "stop"
        Item.model_validate_json(r.choices[0].text)
    rest = (await edges.http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "item 0"}], "seed": 0, "temperature": 1.0,
        "max_completion_tokens": 200, "response_format": {"type": "json_schema", "json_schema": {
            "name": "item", "schema": Item.model_json_schema(), "strict": True}}})).json()
    assert rest["choices"][0]["message"]["content"] == out[0].choices[0].text
    text, _, finish = summed(await stream(edges, reqs[1]))
    assert (text, finish) == (out[1].choices[0].text, "stop")


async def test_json_object_regex_and_choice_constraints(edges):
    obj = await unary(edges, chat(seed=2, max_completion_tokens=200, response_format=pb.ResponseFormat(type="json_object")))
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].text), dict)
    regex = await unary(edges, pb.GenerateRequest(model=MODEL, prompt="code", seed=1, max_tokens=20,
                                                  structured_outputs=pb.StructuredOutputs(regex="[a-c]{3}")))
    assert len(regex.choices[0].text) == 3 and set(regex.choices[0].text) <= set("abc")
    choice = await unary(edges, pb.GenerateRequest(model=MODEL, prompt="pick", seed=1, max_tokens=20,
                                                   structured_outputs=pb.StructuredOutputs(choice=["alpha", "beta"])))
    assert choice.choices[0].text in ("alpha", "beta")


async def test_named_tool_choice_returns_valid_calls_unary_and_streamed(edges):
    reqs = [chat("weather?", tools=[WEATHER, ALARM], tool_choice=pb.ToolChoice(function="get_weather"), seed=s,
                 temperature=1.0, max_completion_tokens=200) for s in range(8)]
    out = await asyncio.wait_for(asyncio.gather(*(unary(edges, r) for r in reqs)), 300)
    for r in out:
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.text == ""
        (call,) = c.tool_calls
        assert call.name == "get_weather" and call.id.startswith("call_")
        Weather.model_validate_json(call.arguments)
    text, calls, finish = summed(await stream(edges, reqs[0]))
    first = out[0].choices[0].tool_calls[0]
    assert (text, calls, finish) == ("", {0: ("get_weather", first.arguments)}, "tool_calls")


async def test_required_tools_and_a_tool_conversation(edges):
    messages = [pb.ChatMessage(role="user", content="wake me at 7"),
                pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="call_1", name="set_alarm",
                                                                         arguments='{"hour": 7}')]),
                pb.ChatMessage(role="tool", content="ok", tool_call_id="call_1", name="set_alarm"),
                pb.ChatMessage(role="user", content="and the weather?")]
    req = pb.GenerateRequest(model=MODEL, messages=messages, tools=[WEATHER, ALARM], parallel_tool_calls=False,
                             tool_choice=pb.ToolChoice(mode="required"), seed=4, max_completion_tokens=300)
    r = await unary(edges, req)
    c = r.choices[0]
    if c.finish_reason == "tool_calls":
        (call,) = c.tool_calls  # parallel_tool_calls false: exactly one
        assert call.name in ("get_weather", "set_alarm") and isinstance(json.loads(call.arguments), dict)
    rest = (await edges.http.post("/v1/chat/completions", json={
        "model": MODEL, "seed": 4, "max_completion_tokens": 300, "parallel_tool_calls": False,
        "tool_choice": "required", "messages": [
            {"role": "user", "content": "wake me at 7"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "set_alarm", "arguments": '{"hour": 7}'}}]},
            {"role": "tool", "content": "ok", "tool_call_id": "call_1", "name": "set_alarm"},
            {"role": "user", "content": "and the weather?"}],
        "tools": [{"type": "function", "function": {"name": t.name, "parameters": json.loads(t.parameters_json),
                                                    **({"description": t.description} if t.description else {})}}
                  for t in (WEATHER, ALARM)]})).json()
    assert r.usage.prompt_tokens == rest["usage"]["prompt_tokens"]  # the same template render
    rest_calls = [(t["function"]["name"], t["function"]["arguments"]) for t in rest["choices"][0]["message"].get(
        "tool_calls") or []]
    assert [(t.name, t.arguments) for t in c.tool_calls] == rest_calls


async def test_chat_logprobs_echo_max_completion_tokens_and_include_usage(edges):
    lp = await unary(edges, chat(seed=1, logprobs=3, max_completion_tokens=5, ignore_eos=True))
    assert lp.usage.completion_tokens == 5 and len(lp.choices[0].logprobs) == 5
    assert all(len(t.top) == 3 for t in lp.choices[0].logprobs)
    streamed = await stream(edges, chat(seed=1, logprobs=3, max_completion_tokens=5, ignore_eos=True))
    assert [t.token_id for c in streamed for t in c.logprobs] == [t.token_id for t in lp.choices[0].logprobs]

    echo = pb.GenerateRequest(model=MODEL, prompt="def main():", echo=True, max_completion_tokens=4, seed=2,
                              ignore_eos=True, user="end-user-1")
    r = await unary(edges, echo)
    assert r.choices[0].text.startswith("def main():") and r.usage.completion_tokens == 4
    chunks = await stream(edges, echo)
    assert chunks[0].text.startswith("def main():")
    assert "".join(c.text for c in chunks) == r.choices[0].text
    assert chunks[-1].HasField("usage")  # unset include_usage: usage last, as before

    no_usage = pb.GenerateRequest(model=MODEL, prompt="x", max_tokens=2, include_usage=False)
    assert not any(c.HasField("usage") for c in await stream(edges, no_usage))


async def test_adapter_by_name_and_alias_matches_rest_and_is_listed(edges):
    req = dict(prompt="import os", max_tokens=8, temperature=0.0, ignore_eos=True)
    base = await unary(edges, pb.GenerateRequest(model=MODEL, **req))
    tuned = await unary(edges, pb.GenerateRequest(model=f"{MODEL}:a", **req))
    alias = await unary(edges, pb.GenerateRequest(model="alias-a", **req))
    assert tuned.model == f"{MODEL}:a" and alias.model == f"{MODEL}:a"
    assert tuned.choices[0].text == alias.choices[0].text != base.choices[0].text
    rest = (await edges.http.post("/v1/completions", json={"model": f"{MODEL}:a", **req})).json()
    assert rest["choices"][0]["text"] == tuned.choices[0].text
    models = await edges.stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)
    assert [(m.id, m.parent) for m in models.models] == [(MODEL, ""), (f"{MODEL}:a", MODEL)]
    denied = (("authorization", f"Bearer {DENIED_KEY}"),)
    assert [m.id for m in (await edges.stub.ListModels(pb.ListModelsRequest(), metadata=denied)).models] == [MODEL]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await unary(edges, pb.GenerateRequest(model=f"{MODEL}:a", **req), metadata=denied)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("request_, code, param", [
    (chat(response_format=pb.ResponseFormat(type="json_schema", json_schema=pb.JsonSchema(schema_json="{nope"))),
     grpc.StatusCode.INVALID_ARGUMENT, "response_format.json_schema.schema"),
    (chat(response_format=pb.ResponseFormat(type="xml")), grpc.StatusCode.INVALID_ARGUMENT, "response_format.type"),
    (chat(response_format=pb.ResponseFormat(type="json_schema", json_schema=pb.JsonSchema(
        schema_json='{"type": "object", "not": {"type": "string"}}'))), grpc.StatusCode.INVALID_ARGUMENT,
     "response_format"),
    (chat(tools=[WEATHER], tool_choice=pb.ToolChoice(function="nope")), grpc.StatusCode.INVALID_ARGUMENT,
     "tool_choice"),
    (chat(tools=[pb.Tool(name="bad name!")]), grpc.StatusCode.INVALID_ARGUMENT, "tools.0.function.name"),
    (chat(tools=[pb.Tool(name="f", parameters_json="[1,")]), grpc.StatusCode.INVALID_ARGUMENT,
     "tools.0.function.parameters"),
    (chat(structured_outputs=pb.StructuredOutputs(regex="a", grammar="root ::= \"a\"")),
     grpc.StatusCode.INVALID_ARGUMENT, "structured_outputs"),
    (pb.GenerateRequest(model=MODEL, prompt="x", echo=True, logprobs=1), grpc.StatusCode.INVALID_ARGUMENT, "echo"),
    (pb.GenerateRequest(model=MODEL, prompt="x", max_tokens=3, max_completion_tokens=4),
     grpc.StatusCode.INVALID_ARGUMENT, "max_completion_tokens"),
    (pb.GenerateRequest(model=MODEL, prompt="x", logit_bias={10**6: 1.0}), grpc.StatusCode.INVALID_ARGUMENT,
     "logit_bias"),
    (pb.GenerateRequest(model=f"{MODEL}:nope", prompt="x"), grpc.StatusCode.NOT_FOUND, "model"),
])
async def test_invalid_new_fields_end_with_client_error_statuses(edges, request_, code, param):
    for call in (lambda: unary(edges, request_), lambda: stream(edges, request_)):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call()
        assert exc.value.code() == code, exc.value.details()
        assert dict(exc.value.trailing_metadata() or ()).get("error-param") == param, exc.value.details()
