"""The gRPC servicer applies the REST checks (issue 25, item 2) and never truncates silently
(item 1): a fake context records the status the RPC ends with."""

from __future__ import annotations

import grpc
import pytest

from fleetserve.api.grpc import inference_pb2 as pb
from fleetserve.api.grpc.servicer import GrpcStatusRaised, InferenceServicer
from tests.api.rest_harness import MODEL, TENANT_KEY, ScriptedClient, make_rest
from tests.api.test_truncation import ABORTED, COMPLETE


class FakeContext:
    def __init__(self, key: str = TENANT_KEY):
        self.metadata = [("authorization", f"Bearer {key}")]
        self.code = None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, meta):
        self.trailing = dict(meta)


def servicer(checkpoint, script, **kwargs) -> InferenceServicer:
    return InferenceServicer(make_rest(ScriptedClient(script), checkpoint).service, **kwargs)


@pytest.mark.parametrize("request_, code, param", [
    (pb.GenerateRequest(model=MODEL), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    (pb.GenerateRequest(model=MODEL, prompt="hi", n=0), grpc.StatusCode.INVALID_ARGUMENT, "n"),
    (pb.GenerateRequest(model=MODEL, prompt="hi", stop=["a"] * 17), grpc.StatusCode.INVALID_ARGUMENT, "stop"),
    (pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role="root", content="a")]),
     grpc.StatusCode.INVALID_ARGUMENT, "messages.0.role"),
    (pb.GenerateRequest(model="nope", prompt="hi"), grpc.StatusCode.NOT_FOUND, "model"),
    (pb.GenerateRequest(model=MODEL, prompt="a" * 5000), grpc.StatusCode.INVALID_ARGUMENT, None),  # over 4 KiB
])
async def test_invalid_requests_end_with_a_client_error_status(tiny_llama_path, request_, code, param):
    ctx = FakeContext()
    with pytest.raises(GrpcStatusRaised):
        await servicer(tiny_llama_path, COMPLETE, max_message_bytes=4096).Generate(request_, ctx)
    assert ctx.code == code
    assert ctx.trailing.get("error-param") == param


async def test_truncated_stream_is_unavailable_not_a_stop(tiny_llama_path):
    ctx = FakeContext()
    chunks = []
    with pytest.raises(GrpcStatusRaised):
        async for chunk in servicer(tiny_llama_path, ABORTED).GenerateStream(pb.GenerateRequest(model=MODEL, prompt="hi"),
                                                                              ctx):
            chunks.append(chunk)
    assert ctx.code == grpc.StatusCode.UNAVAILABLE and "engine shut down" in ctx.details
    assert chunks and not any(c.finish_reason for c in chunks)
