"""Property-based fuzz of the replica link (issue 25, item 4): random and mutated frames.

- The body decoders accept a frame only as one of their direction's messages and refuse
  anything else with FrameError, never another exception.
- Any change to a sealed frame (a flipped byte, a cut, an insertion) fails its MAC.
- A live link server fed random and mutated frames on an authenticated connection closes
  that connection with a log line, and a stream on another connection goes on unharmed.

Derandomized and bounded (``FLEETSERVE_FUZZ_EXAMPLES``, default 80 per property).
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetserve.deployments import link_frames as lf
from fleetserve.deployments import link_messages as lm
from fleetserve.deployments.link_errors import error_frame
from fleetserve.deployments.replica_link import ReplicaLinkClient, ReplicaLinkServer
from fleetserve.engine.protocol import GenerateRequest, RequestOutput, TokenLogprob
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import RateLimitError
from tests.fixtures.fuzz import mutated

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FLEETSERVE_FUZZ_EXAMPLES", "80"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SECRET = os.urandom(32)

VALID = [
    lm.Generate(7, GenerateRequest("g", SamplingParams(max_tokens=4, stop=["\n"], logit_bias={5: 1.0}),
                                   prompt_token_ids=[1, 2, 3], tenant_id="t"), 4096),
    lm.Credit(7, 4096),
    lm.Cancel(7),
    lm.Output.of(7, RequestOutput("g", "tok", [9], [TokenLogprob(9, -0.1, {3: -2.0})], prompt_tokens=3)),
    lm.End(7),
    error_frame(7, RateLimitError("slow down", retry_after_s=2.0)),
    lm.Migrate(7, "draining"),
]
BODIES = [lm.encode(msg) for msg in VALID]


garbage = st.one_of(st.binary(max_size=256), mutated(BODIES))


def _decoded_or_refused(decode, body: bytes, allowed: tuple) -> None:
    try:
        msg = decode(body)
    except lm.FrameError:
        return
    assert type(msg) in allowed  # a mutation that is still a valid message of this direction


@FUZZ
@given(body=garbage)
def test_decoders_refuse_garbage_with_frame_error_only(body):
    _decoded_or_refused(lm.decode_request, body, lm.REQUESTS)
    _decoded_or_refused(lm.decode_reply, body, lm.REPLIES)


@FUZZ
@given(data=st.data())
def test_any_change_to_a_sealed_frame_fails_its_mac(data):
    key = b"k" * 32
    frames = [lf.Sealer(key).seal(body)[lf.LENGTH.size:] for body in BODIES]
    bad = data.draw(mutated(frames))
    if bad in frames:
        return  # the mutations cancelled out
    with pytest.raises(lm.FrameError):
        lf.Opener(key, None).open(bad)


class _ServerThread:
    """A link server with one long-lived client stream, on an event loop in its own thread
    (hypothesis drives plain functions)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.run(self._start())

    def run(self, coro, timeout_s: float = 20.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self):
        async def tokens(request):
            for i in range(request.params.max_tokens):
                await asyncio.sleep(0.001)
                done = i == request.params.max_tokens - 1
                yield RequestOutput(request.request_id, "t", [i], finished=done, finish_reason="length" if done else None)

        self.server = ReplicaLinkServer(tokens, SECRET)
        self.address = await self.server.start()
        self.client = ReplicaLinkClient(SECRET)
        self.link = await self.client.link(self.address)
        self.survivor = self.client.generate(self.link, GenerateRequest("survivor", SamplingParams(max_tokens=100_000)))
        self.seen = [(await self.survivor.__anext__()).token_ids_delta[0]]

    async def send_raw(self, frames: list[bytes]) -> bytes:
        """Authenticate, send ``frames`` (sealed or not), return what came back until the close."""
        host, _, port = self.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await lf.ingress_handshake(reader, writer, SECRET)
            writer.write(b"".join(frames))
            await writer.drain()
            writer.write_eof()  # a frame that announces more than it holds ends here
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    async def survivor_moves(self) -> None:
        for _ in range(3):
            self.seen.append((await self.survivor.__anext__()).token_ids_delta[0])

    async def stop(self):
        await self.survivor.aclose()
        await self.client.close()
        await self.server.close()


@pytest.fixture(scope="module")
def live():
    srv = _ServerThread()
    yield srv
    srv.run(srv.stop())
    srv.loop.call_soon_threadsafe(srv.loop.stop)


def _seal(body: bytes, skip: int) -> bytes:
    """``body`` sealed as it should be -- but under a fresh session key, so the server's MAC
    check refuses it -- or, with ``skip`` 0, framed with its length and a zero MAC."""
    if skip == 0:
        return lf.LENGTH.pack(len(body) + lf.MAC_BYTES) + body + bytes(lf.MAC_BYTES)
    return lf.Sealer(os.urandom(32)).seal(body)


@FUZZ
@given(body=garbage, skip=st.integers(0, 1), raw_prefix=st.binary(max_size=8))
def test_a_live_server_closes_a_connection_that_sends_garbage_and_serves_the_others(live, body, skip, raw_prefix):
    frames = [raw_prefix + _seal(body, skip)]
    back = live.run(live.send_raw(frames))
    assert back == b""  # closed, nothing answered: no stream started from a forged frame
    live.run(live.survivor_moves())
    assert live.seen == list(range(len(live.seen)))  # in order, none lost or repeated
    assert not live.link.closed


@FUZZ
@given(bodies=st.lists(garbage, min_size=1, max_size=3))
def test_a_live_server_refuses_authenticated_garbage(live, bodies):
    """Correctly sealed frames (the peer holds the secret) whose bodies are garbage: the
    server closes the connection unless a body happens to decode as a valid request."""
    async def send():
        host, _, port = live.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            sealer, _ = await lf.ingress_handshake(reader, writer, SECRET)
            writer.write(b"".join(sealer.seal(b) for b in bodies))
            await writer.drain()
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    live.run(send())  # returns once the server closed the connection, whatever it answered
    live.run(live.survivor_moves())
    assert live.seen == list(range(len(live.seen)))
