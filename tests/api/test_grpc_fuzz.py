"""Property-based fuzz of the gRPC API (issue 25, item 4) through a real grpc channel.

An in-process ``grpc.aio`` server runs the real :class:`InferenceServicer` over an
in-process :class:`InferenceService` (real tokenizer of the tiny checkpoint, a scripted
stream stage). Hypothesis sends (a) well-typed ``GenerateRequest`` messages with hostile
field values and (b) raw bytes -- random, and valid messages with bytes flipped, cut or
inserted -- to every method. Every call ends OK or with a client-side status
(INVALID_ARGUMENT, NOT_FOUND, ...): never INTERNAL, UNKNOWN or another server-fault code,
and a valid request still succeeds afterwards. Derandomized and bounded
(``FLEETSERVE_FUZZ_EXAMPLES``, default 80 per property); the number of calls is printed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetserve.api.grpc import inference_pb2 as pb
from fleetserve.api.grpc import inference_pb2_grpc as pbg
from fleetserve.api.grpc.registration import add_servicer
from fleetserve.api.grpc.servicer import InferenceServicer
from tests.api.rest_harness import MODEL, TENANT_KEY, ScriptedClient, make_rest
from tests.api.test_truncation import COMPLETE
from tests.fixtures.fuzz import mutated

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FLEETSERVE_FUZZ_EXAMPLES", "80"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
METHODS = {"/fleetserve.v1.Inference/Generate": "unary", "/fleetserve.v1.Inference/GenerateStream": "stream",
           "/fleetserve.v1.Inference/ListModels": "unary"}
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
                 grpc.StatusCode.UNIMPLEMENTED}
MD = (("authorization", f"Bearer {TENANT_KEY}"),)
VALID = pb.GenerateRequest(model=MODEL, prompt="def f(x):", max_tokens=4, temperature=0.5, stop=["\n"])
VALID_CHAT = pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role="user", content="hi")], n=2, logprobs=2)


class _GrpcServer:
    """The servicer on a real grpc.aio server, on an event loop in its own thread."""

    def __init__(self, checkpoint):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(checkpoint), self.loop).result(60)

    async def _start(self, checkpoint) -> int:
        service = make_rest(ScriptedClient(COMPLETE), checkpoint).service
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 20)])
        add_servicer(InferenceServicer(service, max_message_bytes=64 * 1024), self.server)  # as build.py registers it
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def grpc_target(tiny_llama_path):
    server = _GrpcServer(tiny_llama_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    calls: Counter = Counter()
    yield channel, calls
    print(f"\ngRPC fuzz: {sum(calls.values())} calls, status counts {dict(calls)}")
    channel.close()
    server.stop()


def _call(channel, method: str, payload: bytes) -> grpc.StatusCode:
    """Send raw ``payload`` to ``method``; the status the call ended with."""
    try:
        if METHODS[method] == "unary":
            channel.unary_unary(method)(payload, metadata=MD, timeout=20)
        else:
            for _ in channel.unary_stream(method)(payload, metadata=MD, timeout=20):
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def _check(grpc_target, payload: bytes, method: str) -> None:
    channel, calls = grpc_target
    code = _call(channel, method, payload)
    calls[code.name] += 1
    assert code not in SERVER_FAULTS, f"{method} answered {code} to {payload[:80]!r}"
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} hung on {payload[:80]!r}"


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=64)
requests = st.builds(
    pb.GenerateRequest,
    model=st.one_of(st.just(MODEL), text),
    prompt=text,
    messages=st.lists(st.builds(pb.ChatMessage, role=st.sampled_from(["user", "system", "assistant", "root", ""]),
                                content=text), max_size=3),
    max_tokens=st.integers(0, 2**32 - 1),
    temperature=st.floats(width=32, allow_nan=True, allow_infinity=True),
    top_p=st.floats(width=32, allow_nan=True, allow_infinity=True),
    n=st.integers(0, 2**32 - 1),
    stop=st.lists(text, max_size=20),
    seed=st.integers(0, 2**64 - 1),
    logprobs=st.integers(0, 2**32 - 1),
    top_k=st.integers(-(2**31), 2**31 - 1),
    ignore_eos=st.booleans(),
)


@FUZZ
@given(request=requests, method=st.sampled_from(sorted(METHODS)))
def test_typed_messages_with_hostile_values_get_a_client_status(grpc_target, request, method):
    _check(grpc_target, request.SerializeToString(), method)


SEEDS = [VALID.SerializeToString(), VALID_CHAT.SerializeToString()]


@FUZZ
@given(payload=st.one_of(st.binary(max_size=128), mutated(SEEDS)), method=st.sampled_from(sorted(METHODS)))
def test_raw_and_mutated_bytes_get_a_client_status(grpc_target, payload, method):
    _check(grpc_target, payload, method)


def test_the_server_still_serves_after_the_fuzz(grpc_target):
    channel, _ = grpc_target
    stub = pbg.InferenceStub(channel)
    reply = stub.Generate(VALID, metadata=MD, timeout=20)
    assert reply.choices and reply.choices[0].finish_reason == "length"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bytes_that_do_not_parse_are_invalid_argument(grpc_target, method):
    channel, _ = grpc_target
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(method)(b"\xff\xff", metadata=MD, timeout=20)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not a valid" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # authentication still comes first
        channel.unary_unary(method)(b"\xff\xff", metadata=(("authorization", "Bearer wrong"),), timeout=20)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
