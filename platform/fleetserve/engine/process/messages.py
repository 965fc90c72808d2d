"""The messages on the engine pipe (``ProcessEngine`` in the replica <-> ``core_process``).

Frames are ``multiprocessing.connection`` byte messages whose body is
``[PIPE_VERSION][type byte][pickled field tuple]`` (:mod:`fleetserve.engine.wire`, which also
says why the fields are pickled). A frame that does not decode raises
:class:`~fleetserve.engine.wire.FrameError`; the side that reads one ends the pipe.

Parent -> child: :class:`Configure` first, then :class:`Add`, :class:`Op`, :class:`Stop`.
Child -> parent: :class:`Hello` once the model is loaded (or :class:`Fatal`), then
:class:`Outputs` per step, :class:`Added`, :class:`Reply`, :class:`Idle`, :class:`Fatal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fleetserve.engine.protocol import EngineStats, GenerateRequest, ModelInfo, RequestOutput
from fleetserve.engine.wire import FrameCodec, FrameError

PIPE_VERSION = 1

__all__ = [
    "PIPE_VERSION", "FrameError", "Configure", "Add", "Op", "Stop", "Hello", "Outputs", "Added",
    "Reply", "Idle", "Fatal", "encode", "decode",
]


# ---------------------------------------------------------------- parent -> child
@dataclass
class Configure:
    """The first message: the :class:`EngineConfig` as a JSON-ready dict."""

    config: dict


@dataclass
class Add:
    """A new request; answered by :class:`Added`."""

    request: GenerateRequest


@dataclass
class Op:
    """Run ``_op_<name>(*args)`` between steps; answered by :class:`Reply` unless ``call_id`` is None."""

    call_id: Optional[int]
    name: str
    args: tuple


@dataclass
class Stop:
    """Finish the step loop and exit."""


# ---------------------------------------------------------------- child -> parent
@dataclass
class Hello:
    """The model is loaded: its facts and the engine's first stats."""

    info: ModelInfo
    stats: EngineStats


@dataclass
class Outputs:
    """One step's outputs that are due (paced in the child), with the engine's stats."""

    outputs: list[RequestOutput]
    stats: EngineStats


@dataclass
class Added:
    """The step loop took request ``request_id`` in (``error`` None) or rejected it."""

    request_id: str
    error: Optional[BaseException]


@dataclass
class Reply:
    """The result of :class:`Op` ``call_id``: ``value``, or ``error`` when it raised."""

    call_id: int
    value: Any
    error: Optional[BaseException]


@dataclass
class Idle:
    """The step loop has nothing left to run."""

    stats: EngineStats


@dataclass
class Fatal:
    """The child failed (model load or step loop) and exits; ``message`` says why."""

    message: str


_CODEC = FrameCodec("engine pipe", PIPE_VERSION, {
    1: Configure, 2: Add, 3: Op, 4: Stop,
    16: Hello, 17: Outputs, 18: Added, 19: Reply, 20: Idle, 21: Fatal,
})
encode = _CODEC.encode
decode = _CODEC.decode
