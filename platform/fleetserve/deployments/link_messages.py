"""The messages on the replica link (ingress <-> model replica, :mod:`.replica_link`).

A frame is a 4-byte big-endian length, then ``[LINK_VERSION][type byte][pickled field
tuple]`` (:mod:`fleetserve.engine.wire`, which also says why the fields are pickled; the
link authenticates its peer before the first frame). A frame that does not decode raises
:class:`~fleetserve.engine.wire.FrameError`; the side that reads one closes that connection.

Ingress -> replica: :class:`Generate`, :class:`Cancel`.
Replica -> ingress: :class:`Output` per stream item, then :class:`End`, :class:`StreamError`
or :class:`Migrate` (the replica hands the request back: resume it elsewhere).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fleetserve.engine.protocol import GenerateRequest, RequestOutput
from fleetserve.engine.wire import FrameCodec, FrameError

LINK_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024 * 1024
LENGTH = struct.Struct("!I")  # the length prefix in front of each frame body

__all__ = [
    "LINK_VERSION", "MAX_FRAME_BYTES", "LENGTH", "FrameError", "Generate", "Cancel", "Output",
    "End", "StreamError", "Migrate", "encode", "decode", "frame",
]


@dataclass
class Generate:
    """Open stream ``sid`` for ``request``."""

    sid: int
    request: GenerateRequest


@dataclass
class Cancel:
    """The ingress let go of stream ``sid``: abort its request."""

    sid: int


@dataclass
class Output:
    """One item of stream ``sid``."""

    sid: int
    output: RequestOutput


@dataclass
class End:
    """Stream ``sid`` ended without error."""

    sid: int


@dataclass
class StreamError:
    """Stream ``sid`` failed; ``error`` is raised at the ingress."""

    sid: int
    error: BaseException


@dataclass
class Migrate:
    """Stream ``sid`` ends unfinished because the replica is draining in ``migrate`` mode:
    the ingress continues it on another replica from the tokens it already has."""

    sid: int
    reason: str


_CODEC = FrameCodec("replica link", LINK_VERSION,
                    {1: Generate, 2: Cancel, 16: Output, 17: End, 18: StreamError, 19: Migrate})
encode = _CODEC.encode
decode = _CODEC.decode


def frame(msg) -> bytes:
    """``msg`` encoded, behind its length prefix: ready for the socket."""
    body = encode(msg)
    return LENGTH.pack(len(body)) + body
