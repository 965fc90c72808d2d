"""The engine pipe's typed frames (engine.process.messages over engine.wire): every message
round-trips; a wrong version, an unknown type or a garbage frame is a FrameError; and each
side of the pipe that reads one ends the pipe instead of crashing."""

from __future__ import annotations

import asyncio
import pickle
import socket
from multiprocessing.connection import Connection

import pytest

from fleetserve.engine.process import messages as m
from fleetserve.engine.process.core_process import PipeCore
from fleetserve.engine.process.process_engine import ProcessEngine
from fleetserve.engine.protocol import EngineStats, ModelInfo, RequestOutput, TokenLogprob
from fleetserve.errors import InvalidRequestError, ServiceUnavailableError
from tests.engine.factories import make_config, make_generate_request

EXAMPLES = [
    m.Configure({"model": "fake", "block_size": 4}),
    m.Add(make_generate_request(request_id="a", stream_interval_s=0.25)),
    m.Op(7, "preempt", ("a",)),
    m.Op(None, "abort", ("a",)),
    m.Stop(),
    m.Hello(ModelInfo("tiny", 512, 128, [2]), EngineStats(num_running=1)),
    m.Outputs([RequestOutput("a", "hi", [1, 2], [TokenLogprob(1, -0.5, {3: -1.0})])], EngineStats(num_waiting=2)),
    m.Added("a", None),
    m.Reply(7, True, None),
    m.Idle(EngineStats()),
    m.Fatal("RuntimeError: no model"),
]


def test_every_message_type_is_covered_by_the_examples():
    assert {type(msg) for msg in EXAMPLES} == set(m._CODEC.message_types)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda msg: type(msg).__name__)
def test_round_trip(msg):
    data = m.encode(msg)
    assert data[0] == m.PIPE_VERSION
    assert m.decode(data) == msg


def test_errors_round_trip_typed():
    back = m.decode(m.encode(m.Added("a", InvalidRequestError("too long", field="prompt"))))
    assert isinstance(back.error, InvalidRequestError) and back.error.field == "prompt"


def test_wrong_version_is_rejected():
    data = bytearray(m.encode(m.Stop()))
    data[0] = m.PIPE_VERSION + 1
    with pytest.raises(m.FrameError, match=f"version {m.PIPE_VERSION + 1}, expected {m.PIPE_VERSION}"):
        m.decode(bytes(data))


def test_unknown_type_is_rejected():
    with pytest.raises(m.FrameError, match="unknown message type 250"):
        m.decode(bytes((m.PIPE_VERSION, 250)) + pickle.dumps(()))


@pytest.mark.parametrize("data", [
    b"",
    bytes((m.PIPE_VERSION,)),
    m.encode(m.Reply(1, "x" * 100, None))[:-5],  # truncated
    bytes((m.PIPE_VERSION, 19)) + b"\x00garbage",
    bytes((m.PIPE_VERSION, 19)) + pickle.dumps([1, 2, None]),  # not a field tuple
    bytes((m.PIPE_VERSION, 19)) + pickle.dumps((1,)),  # Reply with too few fields
], ids=["empty", "header-only", "truncated", "garbage", "list-body", "wrong-arity"])
def test_malformed_frames_are_rejected(data):
    with pytest.raises(m.FrameError):
        m.decode(data)


def test_encoding_something_else_is_rejected():
    with pytest.raises(m.FrameError, match="not a message"):
        m.encode(("add", None))


def _pipe() -> tuple[Connection, Connection]:
    a, b = socket.socketpair()
    return Connection(a.detach()), Connection(b.detach())


def test_child_stops_on_a_bad_frame_and_takes_good_ones():
    ours, theirs = _pipe()
    core = PipeCore(make_config(), theirs)
    request = make_generate_request(request_id="ok")
    ours.send_bytes(m.encode(m.Add(request)))
    core._read(block=False)
    assert [r.request_id for r, _ in core._adds] == ["ok"] and not core._stopping
    ours.send_bytes(bytes((m.PIPE_VERSION + 1, 2)) + pickle.dumps((request,)))
    core._read(block=False)  # logged, not raised
    assert core._stopping
    ours.close()
    theirs.close()


def test_child_treats_a_parent_only_message_as_a_bad_frame():
    ours, theirs = _pipe()
    core = PipeCore(make_config(), theirs)
    ours.send_bytes(m.encode(m.Idle(EngineStats())))
    core._read(block=False)
    assert core._stopping
    ours.close()
    theirs.close()


async def test_replica_side_ends_the_pipe_on_a_bad_frame():
    ours, theirs = _pipe()
    engine = ProcessEngine(make_config())
    engine._loop = asyncio.get_running_loop()
    engine._conn = ours
    pending = engine._loop.create_future()
    engine._adding["x"] = pending
    theirs.send_bytes(m.encode(m.Idle(EngineStats(num_running=3))))
    theirs.send_bytes(b"\x01\x11not a pickle")
    engine._on_readable()  # logged, not raised
    assert engine.stats().num_running == 3  # the good frame before it was taken
    assert engine._conn is None and engine._dead.startswith("engine process sent a bad frame")
    with pytest.raises(ServiceUnavailableError, match="bad frame"):
        await pending
    with pytest.raises(EOFError):
        theirs.recv_bytes()  # the child sees its pipe closed and exits
    theirs.close()
