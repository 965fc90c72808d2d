"""Typed frames: the codec shared by the engine pipe and the replica link.

A frame body is ``[version: 1 byte][message type: 1 byte][pickled tuple of the fields]``.
Each wire (``engine/process/messages.py``, ``deployments/link_messages.py``) declares its
message dataclasses and one :class:`FrameCodec` with its own version byte and a type byte
per class. The transport around the body (``multiprocessing.connection``'s length prefix on
the pipe, a 4-byte length on the link) stays with the wire.

Why pickle for the fields: they are fleetserve objects (GenerateRequest, RequestOutput,
EngineStats, ModelInfo) and exceptions that must arrive as the same typed objects; pickle
carries them in one C call, faster than any schema codec we could write in Python for the
one-frame-per-step hot path. Both wires are private: the pipe is a socketpair to our own
child, and the link authenticates its peer (HMAC) before the first frame. The message
itself is pickled as a plain tuple of its fields, so the per-frame cost over the old
string-tagged tuples is two header bytes and one dict lookup per side.
"""

from __future__ import annotations

import dataclasses
import pickle
from operator import attrgetter
from typing import Any, Callable, Iterable

from fleetserve.errors import FleetserveError

_PICKLE = pickle.HIGHEST_PROTOCOL


class FrameError(FleetserveError):
    """A frame that cannot be decoded: wrong version byte, unknown message type, truncated
    or garbage body. The receiver ends that connection; it never reaches a user."""

    code = "frame_error"


def _field_getter(cls: type) -> Callable[[Any], tuple]:
    names = [f.name for f in dataclasses.fields(cls)]
    if not names:
        return lambda _msg: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda msg: (one(msg),)
    return attrgetter(*names)  # already returns a tuple


class FrameCodec:
    """``encode(msg) -> bytes`` and ``decode(bytes) -> msg`` for the dataclasses of one wire.

    ``messages`` maps a type byte (0-255) to a dataclass; ``name`` says which wire in errors.
    """

    def __init__(self, name: str, version: int, messages: dict[int, type]):
        if not 0 <= version <= 255 or any(not 0 <= tag <= 255 for tag in messages):
            raise ValueError("version and message type bytes must be 0-255")
        self.name = name
        self.version = version
        self._by_tag = dict(messages)
        self._head = {cls: bytes((version, tag)) for tag, cls in messages.items()}
        self._fields = {cls: _field_getter(cls) for cls in messages.values()}

    @property
    def message_types(self) -> Iterable[type]:
        return self._by_tag.values()

    def encode(self, msg: Any) -> bytes:
        head = self._head.get(type(msg))
        if head is None:
            raise FrameError(f"{self.name}: {type(msg).__name__} is not a message of this wire")
        return head + pickle.dumps(self._fields[type(msg)](msg), _PICKLE)

    def decode(self, data: bytes) -> Any:
        if len(data) < 3:  # two header bytes and at least a pickle's STOP opcode
            raise FrameError(f"{self.name}: truncated frame of {len(data)} bytes")
        if data[0] != self.version:
            raise FrameError(f"{self.name}: frame version {data[0]}, expected {self.version}")
        cls = self._by_tag.get(data[1])
        if cls is None:
            raise FrameError(f"{self.name}: unknown message type {data[1]}")
        try:
            fields = pickle.loads(memoryview(data)[2:])
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad frame
            raise FrameError(f"{self.name}: malformed {cls.__name__} frame ({type(exc).__name__}: {exc})") from None
        if type(fields) is not tuple:
            raise FrameError(f"{self.name}: malformed {cls.__name__} frame (body is not a field tuple)")
        try:
            return cls(*fields)
        except TypeError as exc:
            raise FrameError(f"{self.name}: malformed {cls.__name__} frame ({exc})") from None
