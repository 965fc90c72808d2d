"""The messages on the replica link (ingress <-> model replica, :mod:`.replica_link`).

Each message is a msgspec struct encoded as a msgpack array ``[type tag, field, ...]``; a
decoder per direction accepts only the messages that direction may carry, checks every
field's type, and builds the engine's own dataclasses (``GenerateRequest`` runs its
``SamplingParams`` validation on the replica). Nothing is pickled and no name on the wire
is ever imported: errors cross as a typed :class:`StreamError` rebuilt from an allow-list
(:mod:`.link_errors`). The framing around a body (length, per-frame MAC, sequence numbers)
is :mod:`.link_frames`. A body that does not decode raises :class:`FrameError`; the side
that reads one closes that connection.

Ingress -> replica: :class:`Generate`, :class:`Credit`, :class:`Cancel`.
Replica -> ingress: :class:`Output` per stream item, then :class:`End`, :class:`StreamError`
or :class:`Migrate` (the replica hands the request back: resume it elsewhere).

Why the output is flat: it is the one message per streamed step, so it is an array of
RequestOutput's fields (26 bytes for a one-token delta, against 162 as a keyed map).
"""

from __future__ import annotations

from typing import Optional, Union

import msgspec

from fleetserve.engine.protocol import GenerateRequest, RequestOutput, TokenLogprob
from fleetserve.engine.wire import FrameError

LINK_VERSION = 2  # in the handshake (link_frames.MAGIC); v1 pickled its bodies
MAX_FRAME_BYTES = 64 * 1024 * 1024

__all__ = [
    "LINK_VERSION", "MAX_FRAME_BYTES", "FrameError", "Generate", "Credit", "Cancel", "Output", "End",
    "StreamError", "Migrate", "encode", "decode_request", "decode_reply", "MESSAGE_TYPES",
]


class Generate(msgspec.Struct, tag=1, array_like=True, forbid_unknown_fields=True):
    """Open stream ``sid`` for ``request``; the replica may send ``window`` bytes of
    :class:`Output` frames before the ingress grants more with :class:`Credit`."""

    sid: int
    request: GenerateRequest
    window: int


class Cancel(msgspec.Struct, tag=2, array_like=True, forbid_unknown_fields=True):
    """The ingress let go of stream ``sid``: abort its request."""

    sid: int


class Credit(msgspec.Struct, tag=3, array_like=True, forbid_unknown_fields=True):
    """The ingress's consumer took ``nbytes`` of stream ``sid``'s output frames: the replica
    may send that many more (per-stream flow control, as HTTP/2's WINDOW_UPDATE)."""

    sid: int
    nbytes: int


class Output(msgspec.Struct, tag=16, array_like=True, forbid_unknown_fields=True):
    """One item of stream ``sid``: a :class:`RequestOutput`'s fields, in order."""

    sid: int
    request_id: str
    text_delta: str
    token_ids_delta: list[int]
    logprobs_delta: Optional[list[TokenLogprob]]
    finished: bool
    finish_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    error: Optional[str]

    @classmethod
    def of(cls, sid: int, o: RequestOutput) -> "Output":
        return cls(sid, o.request_id, o.text_delta, o.token_ids_delta, o.logprobs_delta, o.finished,
                   o.finish_reason, o.prompt_tokens, o.completion_tokens, o.cached_prompt_tokens, o.error)

    def output(self) -> RequestOutput:
        return RequestOutput(self.request_id, self.text_delta, self.token_ids_delta, self.logprobs_delta,
                             self.finished, self.finish_reason, self.prompt_tokens, self.completion_tokens,
                             self.cached_prompt_tokens, self.error)


class End(msgspec.Struct, tag=17, array_like=True, forbid_unknown_fields=True):
    """Stream ``sid`` ended without error."""

    sid: int


class StreamError(msgspec.Struct, tag=18, array_like=True, forbid_unknown_fields=True):
    """Stream ``sid`` failed. ``kind`` names a class of the allow-list in
    :mod:`.link_errors`; ``code`` is its OpenAI error code; ``retry_after_s`` is set for the
    retryable kinds (429/503). An unknown kind (a newer replica) is rebuilt from
    ``retry_after_s``: ServiceUnavailableError when set, else EngineError."""

    sid: int
    kind: str
    code: str
    message: str
    field: Optional[str] = None
    retry_after_s: Optional[float] = None


class Migrate(msgspec.Struct, tag=19, array_like=True, forbid_unknown_fields=True):
    """Stream ``sid`` ends unfinished because the replica is draining in ``migrate`` mode:
    the ingress continues it on another replica from the tokens it already has."""

    sid: int
    reason: str


REQUESTS = (Generate, Credit, Cancel)
REPLIES = (Output, End, StreamError, Migrate)
MESSAGE_TYPES = REQUESTS + REPLIES

_ENCODER = msgspec.msgpack.Encoder()
_REQUESTS = msgspec.msgpack.Decoder(Union[REQUESTS])
_REPLIES = msgspec.msgpack.Decoder(Union[REPLIES])

encode = _ENCODER.encode


def _decode(decoder: msgspec.msgpack.Decoder, direction: str, body) -> msgspec.Struct:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included: wrong tag, type or shape
        raise FrameError(f"replica link: malformed {direction} frame ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a field's own check (SamplingParams) refused it
        raise FrameError(f"replica link: invalid {direction} frame ({type(exc).__name__}: {exc})") from None


def decode_request(body) -> Union[Generate, Credit, Cancel]:
    """A message the ingress sent; FrameError for anything else."""
    return _decode(_REQUESTS, "request", body)


def decode_reply(body) -> Union[Output, End, StreamError, Migrate]:
    """A message the replica sent; FrameError for anything else."""
    return _decode(_REPLIES, "reply", body)
