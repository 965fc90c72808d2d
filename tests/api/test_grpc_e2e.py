"""gRPC through Ray Serve's gRPC proxy: unary, streaming, errors, reflection."""

from __future__ import annotations

import grpc
import pytest

from fleetserve.api.grpc import inference_pb2 as pb
from fleetserve.api.grpc import inference_pb2_grpc as pbg

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def channel(serve_app):
    with grpc.insecure_channel(serve_app.grpc_target) as ch:
        yield ch


def meta(serve_app, key="default"):
    k = serve_app.api_key if key == "default" else key
    md = [("application", serve_app.config.server.app_name)]
    return md + ([("authorization", f"Bearer {k}")] if k else [])


def test_unary_and_stream_agree(channel, serve_app):
    stub = pbg.InferenceStub(channel)
    req = pb.GenerateRequest(model=serve_app.model, prompt="def main():", max_tokens=8, seed=5, temperature=0.9, n=2)
    unary = stub.Generate(req, metadata=meta(serve_app), timeout=60)
    assert [c.index for c in unary.choices] == [0, 1]
    assert unary.usage.total_tokens == unary.usage.prompt_tokens + unary.usage.completion_tokens > unary.usage.prompt_tokens
    texts, finish, usage = {0: "", 1: ""}, {}, None
    for chunk in stub.GenerateStream(req, metadata=meta(serve_app), timeout=60):
        if chunk.HasField("usage"):
            usage = chunk.usage
            continue
        texts[chunk.index] += chunk.text
        if chunk.finish_reason:
            finish[chunk.index] = chunk.finish_reason
    assert [texts[0], texts[1]] == [c.text for c in unary.choices]
    assert finish == {0: unary.choices[0].finish_reason, 1: unary.choices[1].finish_reason}
    assert usage == unary.usage


def test_chat_over_grpc_matches_rest(channel, serve_app):
    import httpx

    stub = pbg.InferenceStub(channel)
    msgs = [pb.ChatMessage(role="user", content="hello")]
    g = stub.Generate(pb.GenerateRequest(model=serve_app.model, messages=msgs, max_tokens=6, seed=3), metadata=meta(serve_app))
    r = httpx.post(serve_app.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {serve_app.api_key}"},
                   json={"model": serve_app.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "seed": 3},
                   timeout=60).json()
    assert g.choices[0].text == r["choices"][0]["message"]["content"]
    assert g.usage.prompt_tokens == r["usage"]["prompt_tokens"]


@pytest.mark.parametrize("req_kw, key, code", [
    (dict(model="no-such-model", prompt="x"), "default", grpc.StatusCode.NOT_FOUND),
    (dict(model="MODEL", prompt="x"), None, grpc.StatusCode.UNAUTHENTICATED),
    (dict(model="MODEL", prompt="x"), "fs-not-a-key-000000000000", grpc.StatusCode.UNAUTHENTICATED),
    (dict(model="MODEL", prompt="x"), "OTHER", grpc.StatusCode.PERMISSION_DENIED),
    (dict(model="MODEL", prompt="x", temperature=7.0), "default", grpc.StatusCode.INVALID_ARGUMENT),
    (dict(model="MODEL", prompt="x", max_tokens=100000), "default", grpc.StatusCode.INVALID_ARGUMENT),
    (dict(model="MODEL"), "default", grpc.StatusCode.INVALID_ARGUMENT),
])
def test_errors_map_to_status_codes(channel, serve_app, req_kw, key, code):
    stub = pbg.InferenceStub(channel)
    if req_kw["model"] == "MODEL":
        req_kw = {**req_kw, "model": serve_app.model}
    if key == "OTHER":
        key = serve_app.api_key + "-other"
    for call in (stub.Generate, lambda r, **kw: list(stub.GenerateStream(r, **kw))):
        with pytest.raises(grpc.RpcError) as ei:
            call(pb.GenerateRequest(**req_kw), metadata=meta(serve_app, key), timeout=60)
        assert ei.value.code() == code, ei.value.details()


def test_list_models_and_reflection(channel, serve_app):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    models = pbg.InferenceStub(channel).ListModels(pb.ListModelsRequest(), metadata=meta(serve_app))
    assert [m.id for m in models.models] == [m for m in (serve_app.model, serve_app.vllm_model) if m]
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "fleetserve.v1.Inference" in names


def test_new_fields_and_an_adapter_through_serve(channel, serve_app, make_adapter):
    """Issue 24's fields over Serve's gRPC proxy: a runtime adapter by name, a json_schema
    output, a named tool call streamed, and a stream without the usage message."""
    import json

    import httpx

    admin = {"Authorization": f"Bearer {serve_app.admin_key}"}
    path = str(make_adapter(serve_app.checkpoint, seed=11))
    added = httpx.post(serve_app.base_url + "/admin/adapters", headers=admin, timeout=60,
                       json={"model": serve_app.model, "id": "grpc", "path": path})
    assert added.status_code == 201, added.text
    stub, name = pbg.InferenceStub(channel), f"{serve_app.model}:grpc"
    try:
        kw = dict(prompt="import os", max_tokens=8, temperature=0.0, ignore_eos=True)
        tuned = stub.Generate(pb.GenerateRequest(model=name, **kw), metadata=meta(serve_app), timeout=60)
        base = stub.Generate(pb.GenerateRequest(model=serve_app.model, **kw), metadata=meta(serve_app), timeout=60)
        assert tuned.model == name and tuned.choices[0].text != base.choices[0].text
        cards = stub.ListModels(pb.ListModelsRequest(), metadata=meta(serve_app)).models
        assert (name, serve_app.model) in [(m.id, m.parent) for m in cards]

        schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                  "required": ["n"], "additionalProperties": False}
        msgs = [pb.ChatMessage(role="user", content="a number")]
        js = stub.Generate(pb.GenerateRequest(model=name, messages=msgs, seed=1, max_completion_tokens=50,
                                              response_format=pb.ResponseFormat(type="json_schema", json_schema=pb.JsonSchema(
                                                  name="n", schema_json=json.dumps(schema)))),
                           metadata=meta(serve_app), timeout=60)
        assert 0 <= json.loads(js.choices[0].text)["n"] <= 9

        tool = pb.Tool(name="pick", parameters_json=json.dumps(schema))
        chunks = list(stub.GenerateStream(pb.GenerateRequest(
            model=serve_app.model, messages=msgs, tools=[tool], tool_choice=pb.ToolChoice(function="pick"), seed=2,
            max_completion_tokens=50, include_usage=False), metadata=meta(serve_app), timeout=60))
        assert not any(c.HasField("usage") for c in chunks)
        deltas = [d for c in chunks for d in c.tool_calls]
        assert deltas[0].name == "pick" and deltas[0].id.startswith("call_")
        assert 0 <= json.loads("".join(d.arguments for d in deltas))["n"] <= 9
        assert chunks[-1].finish_reason == "tool_calls"
    finally:
        assert httpx.delete(serve_app.base_url + f"/admin/adapters/{name}", headers=admin, timeout=60).status_code == 200


def test_bytes_that_do_not_parse_are_invalid_argument_through_the_proxy(channel, serve_app):
    """Serve's proxy deserializes with our registration's tolerant deserializer
    (api/grpc/registration.py): garbage is INVALID_ARGUMENT, not grpc's UNKNOWN."""
    for method in ("Generate", "GenerateStream"):
        call = (channel.unary_unary if method == "Generate" else channel.unary_stream)(f"/fleetserve.v1.Inference/{method}")
        with pytest.raises(grpc.RpcError) as ei:
            list(call(b"\xff\xff", metadata=meta(serve_app), timeout=60)) if method != "Generate" else \
                call(b"\xff\xff", metadata=meta(serve_app), timeout=60)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
