"""The replica link (ingress <-> replica streams over TCP on loopback): its typed frames,
order, multiplexing, cancellation, errors, lost connections, bad frames and authentication;
then a real ModelReplica behind it."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest

from fleetserve.deployments import link_frames as lf
from fleetserve.deployments import link_messages as lm
from fleetserve.deployments.link_errors import error_frame, error_of
from fleetserve.deployments.replica_link import ReplicaLinkClient, ReplicaLinkServer
from fleetserve.engine.protocol import GenerateRequest, RequestOutput
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import (
    ContextLengthError,
    EngineError,
    RateLimitError,
    ReplicaStreamLost,
    RequestMigrated,
    ServiceUnavailableError,
)

SECRET = os.urandom(32)


def req(rid: str, n: int) -> GenerateRequest:
    return GenerateRequest(request_id=rid, prompt="x", params=SamplingParams(max_tokens=n, temperature=0))


class CountingGenerator:
    """``generate`` yielding one token per output; records what was closed before finishing."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.started: list[str] = []
        self.aborted: list[str] = []

    async def __call__(self, request: GenerateRequest):
        self.started.append(request.request_id)
        n = request.params.max_tokens
        done = False
        try:
            for i in range(n):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                done = i == n - 1
                yield RequestOutput(request.request_id, token_ids_delta=[i], finished=done,
                                    finish_reason="length" if done else None)
        finally:
            if not done:
                self.aborted.append(request.request_id)


async def wait_until(pred, timeout_s=10.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def served():
    gen = CountingGenerator(delay_s=0.001)
    server = ReplicaLinkServer(gen, SECRET)
    address = await server.start()
    client = ReplicaLinkClient(SECRET)
    yield gen, server, client, address
    await client.close()
    await server.close()


async def collect(client, link, request):
    return [o async for o in client.generate(link, request)]


async def test_concurrent_streams_share_one_link_in_order(served):
    gen, _, client, address = served
    link = await client.link(address)
    assert await client.link(address) is link
    sizes = {f"r{i}": 5 + 7 * i for i in range(8)}
    results = await asyncio.gather(*(collect(client, link, req(rid, n)) for rid, n in sizes.items()))
    for (rid, n), outs in zip(sizes.items(), results):
        assert [o.request_id for o in outs] == [rid] * n
        assert [t for o in outs for t in o.token_ids_delta] == list(range(n))  # none lost, none repeated
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    assert gen.aborted == []


async def test_leaving_early_aborts_on_the_replica(served):
    gen, _, client, address = served
    link = await client.link(address)
    stream = client.generate(link, req("long", 10_000))
    first = await stream.__anext__()
    assert first.token_ids_delta == [0]
    await stream.aclose()
    await wait_until(lambda: gen.aborted == ["long"])
    # The link stays usable for the next request.
    outs = await collect(client, link, req("after", 3))
    assert outs[-1].finished


async def test_replica_errors_reach_the_ingress_typed(served):
    _, server, client, address = served

    async def failing(request):
        raise ServiceUnavailableError("replica is draining", retry_after_s=1.0)
        yield  # pragma: no cover - makes this an async generator

    server._generate = failing
    link = await client.link(address)
    with pytest.raises(ServiceUnavailableError, match="draining"):
        await collect(client, link, req("x", 3))


async def test_a_request_handed_back_ends_with_a_migrate_frame(served):
    """A draining replica raises RequestMigrated in its generator: the link carries a typed
    Migrate frame (not an error) and the ingress raises RequestMigrated; the connection and
    its other streams go on."""
    _, server, client, address = served
    real = server._generate

    async def handing_back(request):
        if request.request_id == "moved":
            yield RequestOutput("moved", token_ids_delta=[7])
            raise RequestMigrated("replica r1 is draining", replica="r1")
        async for out in real(request):
            yield out

    server._generate = handing_back
    link = await client.link(address)
    got: list[int] = []
    with pytest.raises(RequestMigrated, match="handed the request back") as e:
        async for out in client.generate(link, req("moved", 5)):
            got += out.token_ids_delta
    assert got == [7] and isinstance(e.value, ServiceUnavailableError) and not link.closed
    assert [t for o in await collect(client, link, req("other", 3)) for t in o.token_ids_delta] == [0, 1, 2]


async def test_a_stream_nobody_reads_stops_on_the_replica_without_holding_up_the_others(served):
    """Flow control: a consumer that stops reading one stream (a slow SSE client) stops that
    stream's generator on the replica after one window of frames, while another stream on
    the same connection runs to its end; nothing buffers beyond the window."""
    from fleetserve.deployments.replica_link import STREAM_WINDOW_BYTES

    _, server, client, address = served
    pulled: dict[str, int] = {}

    async def endless(request):
        pulled[request.request_id] = 0
        for i in range(request.params.max_tokens):
            pulled[request.request_id] += 1
            yield RequestOutput(request.request_id, "x" * 1000, [i], finished=i == request.params.max_tokens - 1,
                                finish_reason="length" if i == request.params.max_tokens - 1 else None)
            await asyncio.sleep(0)

    server._generate = endless
    link = await client.link(address)
    stalled = client.generate(link, req("stalled", 100_000))
    await stalled.__anext__()
    window_frames = STREAM_WINDOW_BYTES // 1100  # a frame: the 1000-byte text and under 100 more
    await wait_until(lambda: pulled["stalled"] >= window_frames)
    outs = await collect(client, link, req("other", 3 * window_frames))  # three windows' worth, to the end
    assert [t for o in outs for t in o.token_ids_delta] == list(range(3 * window_frames))
    assert pulled["stalled"] <= STREAM_WINDOW_BYTES // 1000 + 2  # held after one window (and the one in hand)
    buffered = link._streams[1]
    assert buffered.queue.qsize() <= STREAM_WINDOW_BYTES // 1000 and buffered.window > -1100
    # Reading again resumes the stream where it stopped: nothing lost or repeated.
    got = [(await stalled.__anext__()).token_ids_delta[0] for _ in range(2 * window_frames)]
    assert got == list(range(1, 2 * window_frames + 1))
    await stalled.aclose()


async def test_lost_connection_fails_streams_and_reconnects(served):
    gen, server, client, address = served
    link = await client.link(address)
    stream = client.generate(link, req("cut", 10_000))
    await stream.__anext__()
    await server.close()  # the replica's side goes away mid-stream
    with pytest.raises(ReplicaStreamLost, match="lost the connection"):
        async for _ in stream:
            pass
    await wait_until(lambda: "cut" in gen.aborted)
    assert link.closed


async def test_wrong_secret_is_refused_before_any_request(caplog):
    gen = CountingGenerator()
    server = ReplicaLinkServer(gen, SECRET)
    address = await server.start()
    intruder = ReplicaLinkClient(b"not the cluster secret")
    try:
        with pytest.raises(ConnectionError, match="authentication"):
            await intruder.link(address)
        # A raw client that skips the handshake and sends a request frame gets nothing run.
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        await reader.readexactly(len(lf.MAGIC) + lf.NONCE_BYTES)
        writer.write(b"\0" * 64 + lf.Sealer(b"k" * 32).seal(lm.encode(lm.Generate(1, req("evil", 3), 1024))))
        assert await reader.read() == b""  # closed on the wrong answer
        writer.close()
        assert gen.started == []
        await wait_until(lambda: caplog.text.count("handshake from 127.0.0.1") >= 2)
        assert "failed authentication" in caplog.text and SECRET.hex() not in caplog.text
    finally:
        await intruder.close()
        await server.close()


LINK_EXAMPLES = [
    lm.Generate(3, req("g", 4), 1024),
    lm.Credit(3, 512),
    lm.Cancel(3),
    lm.Output.of(3, RequestOutput("g", "ab", [1, 2], finished=True, finish_reason="length")),
    lm.End(3),
    error_frame(3, ServiceUnavailableError("draining", retry_after_s=2.0)),
    lm.Migrate(3, "replica r1 is draining"),
]


def test_link_messages_cover_every_type():
    assert {type(msg) for msg in LINK_EXAMPLES} == set(lm.MESSAGE_TYPES)


@pytest.mark.parametrize("msg", LINK_EXAMPLES, ids=lambda msg: type(msg).__name__)
def test_link_message_round_trip_only_in_its_direction(msg):
    body = lm.encode(msg)
    ours, theirs = (lm.decode_request, lm.decode_reply) if type(msg) in lm.REQUESTS else (lm.decode_reply, lm.decode_request)
    assert ours(body) == msg
    with pytest.raises(lm.FrameError, match="malformed"):
        theirs(body)


def test_a_generate_request_arrives_as_the_engine_dataclasses():
    from fleetserve.engine.protocol import LoraRef
    from fleetserve.engine.sampling_params import StructuredOutput

    params = SamplingParams(max_tokens=5, logit_bias={7: -1.5}, stop=["x"], seed=3,
                            structured=StructuredOutput("choice", choices=("a", "b")))
    request = GenerateRequest("r", params, prompt_token_ids=[1, 2], lora=LoraRef("a", "/p", "h"),
                              resume_token_ids=[4], tenant_id="t", priority=2)
    back = lm.decode_request(lm.encode(lm.Generate(1, request, 9))).request
    assert back == request and type(back.params) is SamplingParams
    assert type(back.params.structured) is StructuredOutput and back.params.structured.choices == ("a", "b")


def test_sampling_params_are_validated_when_a_request_is_decoded():
    wire = msgspec.to_builtins(lm.Generate(1, req("r", 3), 9))
    wire[2]["params"]["temperature"] = 7.0
    with pytest.raises(lm.FrameError, match="temperature"):
        lm.decode_request(msgspec.msgpack.encode(wire))


@pytest.mark.parametrize("exc", [
    ServiceUnavailableError("draining", retry_after_s=2.0),
    RateLimitError("slow down", retry_after_s=3.0),
    ContextLengthError("too long", field="prompt"),
    ReplicaStreamLost("gone"),
    EngineError("boom"),
], ids=lambda e: type(e).__name__)
def test_errors_cross_as_their_own_class(exc):
    back = error_of(lm.decode_reply(lm.encode(error_frame(5, exc))))
    assert type(back) is type(exc) and back.message == exc.message and back.field == exc.field
    assert getattr(back, "retry_after_s", None) == getattr(exc, "retry_after_s", None)


def test_errors_outside_the_allow_list_cross_as_engine_errors():
    back = error_of(lm.decode_reply(lm.encode(error_frame(5, KeyError("x")))))
    assert type(back) is EngineError and "KeyError" in back.message
    # A kind this ingress does not know (say a newer replica's) is never looked up by name.
    for retry, cls in ((1.5, ServiceUnavailableError), (None, EngineError)):
        back = error_of(lm.StreamError(5, "os.system", "x", "m", None, retry))
        assert type(back) is cls


@pytest.mark.parametrize("body, match", [
    (msgspec.msgpack.encode([99, 1]), "malformed request"),  # unknown tag
    (lm.encode(lm.Cancel(12345))[:-2], "malformed request"),  # truncated
    (b"", "malformed request"),
    (b"\xffgarbage", "malformed request"),
    (msgspec.msgpack.encode([2, "one"]), "malformed request"),  # wrong field type
    (msgspec.msgpack.encode([2, 1, 2]), "malformed request"),  # extra field
])
def test_link_rejects_bad_frames(body, match):
    with pytest.raises(lm.FrameError, match=match):
        lm.decode_request(body)


def test_a_frame_is_accepted_once_in_order_and_unaltered():
    a, b = lf.Sealer(b"k" * 32), lf.Opener(b"k" * 32, None)
    first, second = a.seal(b"one"), a.seal(b"two")
    size = lf.LENGTH.size
    assert bytes(b.open(first[size:])) == b"one"
    for bad in (first[size:], bytes(bytearray(second[size:])[:-1]) + b"\0", second[size:-1]):
        with pytest.raises(lm.FrameError, match="MAC"):
            b.open(bad)  # replayed, altered, truncated
    assert bytes(b.open(second[size:])) == b"two"
    with pytest.raises(lm.FrameError, match="MAC"):
        lf.Opener(b"j" * 32, None).open(first[size:])  # another session's key


def test_session_keys_differ_per_connection_and_direction():
    n1, n2 = os.urandom(32), os.urandom(32)
    i2r, r2i = lf.session_keys(SECRET, n1, n2)
    assert i2r != r2i and lf.session_keys(SECRET, n2, n1)[0] != i2r and lf.session_keys(b"x", n1, n2)[0] != i2r


async def _raw_client(address: str):
    """A raw, authenticated connection to the server (no _Link reading it)."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    sealer, _ = await lf.ingress_handshake(reader, writer, SECRET)
    return reader, writer, sealer


@pytest.mark.parametrize("bad", [
    lambda s: s.seal(msgspec.msgpack.encode([77, 1])),  # unknown type
    lambda s: s.seal(b"garbage"),  # not msgpack
    lambda s: s.seal(lm.encode(lm.End(1))),  # a valid message, but not one an ingress may send
    lambda s: (s.seal(b"skipped"), s.seal(lm.encode(lm.Cancel(1))))[1],  # out of order
    lambda s: lf.Sealer(b"x" * 32).seal(lm.encode(lm.Cancel(1))),  # wrong key
    lambda s: s.seal(lm.encode(lm.Generate(1, req("dup", 5), 1024))),  # stream id in use
], ids=["unknown", "garbage", "wrong-direction", "reordered", "bad-mac", "duplicate-sid"])
async def test_server_closes_only_the_connection_that_sent_a_bad_frame(served, bad, caplog):
    gen, _, client, address = served
    link = await client.link(address)
    stream = client.generate(link, req("survivor", 200))
    first = await stream.__anext__()
    reader, writer, sealer = await _raw_client(address)
    writer.write(sealer.seal(lm.encode(lm.Generate(1, req("before-bad", 5), 1 << 20))) + bad(sealer))
    await asyncio.wait_for(reader.read(), 10)  # read until the server closes
    assert reader.at_eof()
    writer.close()
    assert "bad frame" in caplog.text
    # The other connection's stream and new streams keep working.
    rest = [o async for o in stream]
    assert [t for o in [first, *rest] for t in o.token_ids_delta] == list(range(200))
    outs = await collect(client, link, req("after", 3))
    assert outs[-1].finished and not link.closed


async def test_server_closes_a_connection_that_announces_an_oversized_frame(served):
    _, _, _, address = served
    reader, writer, _ = await _raw_client(address)
    writer.write(lf.LENGTH.pack(lm.MAX_FRAME_BYTES + 1))
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_client_link_closes_on_a_bad_frame_and_fails_its_streams():
    """A replica whose frame fails its MAC: the ingress drops that link, its streams fail
    as lost, and the next request opens a fresh link."""

    async def bad_replica(reader, writer):
        sealer, opener = await lf.replica_handshake(reader, writer, SECRET)
        await opener.read()  # the Generate
        sealer.seal(b"a frame the ingress never sees")  # so the next one's counter is wrong
        writer.write(sealer.seal(lm.encode(lm.Output.of(1, RequestOutput("x")))))
        await reader.read()  # until the ingress closes
        writer.close()

    server = await asyncio.start_server(bad_replica, "127.0.0.1", 0)
    address = "127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    client = ReplicaLinkClient(SECRET)
    try:
        link = await client.link(address)
        with pytest.raises(ServiceUnavailableError, match="lost the connection"):
            await collect(client, link, req("x", 3))
        assert link.closed
        assert await client.link(address) is not link
    finally:
        await client.close()
        server.close()


async def test_an_ingress_of_another_link_version_falls_back(caplog):
    """A replica speaking link v1 (a 32-byte nonce, no hello): the handshake fails with a
    ConnectionError, which the ingress answers by using the Serve handle."""

    async def old_replica(reader, writer):
        writer.write(os.urandom(32))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(old_replica, "127.0.0.1", 0)
    client = ReplicaLinkClient(SECRET)
    try:
        with pytest.raises(ConnectionError, match="another link protocol"):
            await client.link("127.0.0.1:%d" % server.sockets[0].getsockname()[1])
        assert "handshake with 127.0.0.1" in caplog.text
    finally:
        await client.close()
        server.close()


async def test_a_real_replica_streams_over_its_link(tiny_llama_path, monkeypatch):
    """ModelReplica(link=True) advertises its link in the routing stats; streams over it match
    the replica's own generate token for token, and cancelling aborts the engine request."""
    from fleetserve.config import ModelConfig
    from fleetserve.deployments import replica as replica_mod

    monkeypatch.setattr(replica_mod, "cluster_secret", lambda: SECRET)  # outside Ray: no GCS
    cfg = ModelConfig(name="tiny", checkpoint=str(tiny_llama_path), drain_timeout_s=5,
                      engine_args={"num_kv_blocks": 128, "num_threads": 1})
    replica = replica_mod.ModelReplica.__new__(replica_mod.ModelReplica)
    await replica.__init__(cfg.model_dump(mode="json"), link=True)
    client = ReplicaLinkClient(SECRET)
    try:
        address = replica.record_routing_stats()["link"]
        assert address and address.rsplit(":", 1)[1].isdigit()
        link = await client.link(address)
        params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
        direct = [o async for o in replica.generate(GenerateRequest("a", params, prompt="def f(x):"))]
        linked = await collect(client, link, GenerateRequest("b", params, prompt="def f(x):"))
        assert [t for o in linked for t in o.token_ids_delta] == [t for o in direct for t in o.token_ids_delta]
        assert len([t for o in linked for t in o.token_ids_delta]) == 12 and linked[-1].finished

        stream = client.generate(link, GenerateRequest("c", SamplingParams(max_tokens=1500, ignore_eos=True), prompt="x"))
        await stream.__anext__()
        assert replica.record_routing_stats()["in_flight"] == 1
        assert replica.record_autoscaling_stats()["in_flight"] == 1.0
        await stream.aclose()
        await wait_until(lambda: replica.record_routing_stats()["num_running"] == 0
                         and replica.record_routing_stats()["in_flight"] == 0)
        # Stopped by the cancel, not by running to its 1500 tokens (12 + 12 came before).
        assert replica._engine.stats().generated_tokens_total < 500
    finally:
        await client.close()
        await replica.__del__()
