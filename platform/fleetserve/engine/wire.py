"""Typed frames of the engine pipe: ``[version: 1 byte][message type: 1 byte][pickled field tuple]``.

``engine/process/messages.py`` declares the pipe's message dataclasses and one
:class:`FrameCodec` with its version byte and a type byte per class; the transport around
the body (``multiprocessing.connection``'s length prefix) stays with the pipe.
:class:`FrameError` is shared with the replica link, whose frames are msgspec structs with
a per-frame MAC and no pickle (``deployments/link_messages.py``, ``link_frames.py``).

Why the pipe still pickles its fields: it is a socketpair between a replica and the engine
core process that replica started itself, never a network socket, and its fields include
values no schema covers (an operation's arguments and result, any exception raised in
the child). Pickle carries them in one C call on the one-frame-per-step hot path. A peer
on the pipe is our own child, so unpickling its frames trusts no one new; a frame that
does not unpickle to the declared message is a FrameError, never a crash.
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
