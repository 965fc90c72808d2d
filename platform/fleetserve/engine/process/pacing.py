"""Stream pacing: fewer, merged outputs per stream, with no token dropped, repeated or late.

Every hop of the streaming path (engine queue -> replica -> Ray object -> ingress -> SSE
event) has a fixed cost per item, so under load the platform spends its CPU on items rather
than tokens. Three places merge a request's consecutive outputs into one
(:func:`merge_outputs`: deltas concatenated in order, status from the last):

- :func:`drain_merged`: when a consumer is slower than the engine, everything already
  queued for a request travels as ONE :class:`RequestOutput`. Merging what is queued *at the
  moment the consumer asks* adds no latency (the consumer was busy anyway).
- :func:`paced` / :func:`paced_generate`: an engine that does not pace its own streams
  (``EngineCapabilities.paces_streams`` false, e.g. vLLM) is paced by the replica at the
  request's ``stream_interval_s``.
- :class:`OutputPacer`: in the engine process, outputs are held back before they cross the
  pipe. The engine makes one output per running request per step (about 140 steps/s with the
  tiny model on CPU); sending each costs the replica's event loop an unpickle and a queue
  hand-off, although the replica then merges them for the stream's interval anyway
  (``EngineFront``). That loop also carries every new request's way in and its first token's
  way out, so under load those per-step objects are latency for everyone else.

In every case a request's first output, its final one, and any output of a request with no
interval pass at once, so neither TTFT nor the end of a stream waits. Since the engine only
ever emits text that can no longer become part of a stop string, concatenation cannot split
a stop string either.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import AsyncIterator, Callable, Optional, Sequence

from fleetserve.engine.protocol import EngineProtocol, GenerateRequest, RequestOutput


def merge_outputs(outputs: Sequence[RequestOutput]) -> RequestOutput:
    """One output equal to the given consecutive outputs of one request, in order.

    Deltas are concatenated; the status fields (finished, finish_reason, counters, error)
    come from the last output, which is the most recent state of the request.
    """
    if len(outputs) == 1:
        return outputs[0]
    first, last = outputs[0], outputs[-1]
    if any(o.request_id != first.request_id for o in outputs):
        raise ValueError("merge_outputs: outputs of different requests")
    logprobs = None
    if any(o.logprobs_delta is not None for o in outputs):
        logprobs = [lp for o in outputs for lp in (o.logprobs_delta or ())]
    return replace(
        last,
        text_delta="".join(o.text_delta for o in outputs),
        token_ids_delta=[t for o in outputs for t in o.token_ids_delta],
        logprobs_delta=logprobs,
    )


def drain_merged(first: RequestOutput, queue: asyncio.Queue) -> RequestOutput:
    """``first`` merged with every output already waiting in ``queue`` (never waits).

    Stops at a finished output: nothing of this request can follow it.
    """
    if first.finished or queue.empty():
        return first
    batch = [first]
    while not queue.empty():
        out = queue.get_nowait()
        batch.append(out)
        if out.finished:
            break
    return merge_outputs(batch)


async def paced(stream: AsyncIterator[RequestOutput], interval_s: float) -> AsyncIterator[RequestOutput]:
    """Pace an engine stream that yields per step (engines without their own pacing, e.g. vLLM).

    The first output passes at once; later ones are held and merged until ``interval_s`` has
    passed since the previous yield; a finished output passes at once with what was held.
    The stream is pulled as fast as it produces (the engine's consumer never lags). ``stream``
    is closed when this generator ends; closing or cancelling this one cancels the pending
    pull, which closes ``stream`` too.
    """
    loop = asyncio.get_running_loop()
    it = stream.__aiter__()
    held: list[RequestOutput] = []
    due: Optional[float] = None  # when held outputs may leave; None before the first yield
    pending: Optional[asyncio.Future] = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            timeout = max(0.0, due - loop.time()) if held and due is not None else None
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if pending in done:
                fut, pending = pending, None
                try:
                    out = fut.result()
                except StopAsyncIteration:
                    break
                held.append(out)
                if not (out.finished or due is None or loop.time() >= due):
                    continue
            merged, held = merge_outputs(held), []
            yield merged
            if merged.finished:
                break
            due = loop.time() + interval_s
        if held:  # the stream ended without a finished output
            yield merge_outputs(held)
    finally:
        if pending is not None:
            pending.cancel()  # the engine stream sees the cancellation and closes
        elif hasattr(it, "aclose"):
            await it.aclose()


def paced_generate(engine: EngineProtocol, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
    """``engine.generate(request)`` paced at ``request.stream_interval_s``: by the engine itself
    when its capabilities say it ``paces_streams`` (native), else by :func:`paced`."""
    stream = engine.generate(request)
    if request.stream_interval_s > 0 and not engine.capabilities().paces_streams:
        return paced(stream, request.stream_interval_s)
    return stream


class OutputPacer:
    """Holds each paced request's outputs until its interval is due (see the module docstring).

    Pure bookkeeping with an injected clock; the engine process calls :meth:`offer` with each
    step's outputs, :meth:`due` once per step, :meth:`flush_all` before it blocks, and
    :meth:`take` when an operation (abort) produces a request's last output out of band.
    """

    def __init__(self, now: Callable[[], float]):
        self._now = now
        self._interval: dict[str, float] = {}  # request id -> stream_interval_s
        self._next: dict[str, float] = {}  # request id -> when its next output may leave
        self._held: dict[str, list[RequestOutput]] = {}  # outputs waiting for that time

    def track(self, request_id: str, interval_s: float) -> None:
        """A new request; ``interval_s`` 0 sends each of its outputs at once."""
        if interval_s > 0:
            self._interval[request_id] = interval_s

    def offer(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """This step's outputs; returns those to send now (merged per request)."""
        now = self._now()
        out = []
        for o in outputs:
            rid = o.request_id
            interval = self._interval.get(rid)
            if interval is None:  # unpaced, or not tracked (e.g. an error before tracking)
                out.append(self._merged(rid, o))
                continue
            if o.finished:
                out.append(self._merged(rid, o))
                self._forget(rid)
                continue
            due = self._next.get(rid)
            if due is None or now >= due:  # first output, or its interval has passed
                out.append(self._merged(rid, o))
                self._next[rid] = now + interval
            else:
                self._held.setdefault(rid, []).append(o)
        return out

    def due(self) -> list[RequestOutput]:
        """Held outputs whose interval has passed (requests that made no output this step,
        e.g. preempted ones, still get what they already made)."""
        if not self._held:
            return []
        now = self._now()
        ready = [rid for rid in self._held if now >= self._next.get(rid, 0.0)]
        out = []
        for rid in ready:
            out.append(merge_outputs(self._held.pop(rid)))
            self._next[rid] = now + self._interval.get(rid, 0.0)
        return out

    def flush_all(self) -> list[RequestOutput]:
        """Everything held, now (before the engine process blocks waiting for work)."""
        now = self._now()
        out = [merge_outputs(held) for held in self._held.values()]
        for rid in self._held:
            self._next[rid] = now + self._interval.get(rid, 0.0)
        self._held.clear()
        return out

    def take(self, request_id: str, final: Optional[RequestOutput]) -> Optional[RequestOutput]:
        """``final`` (a request's last output, made outside a step) with what is held for it
        in front; forgets the request."""
        held = self._held.get(request_id)
        self._forget(request_id)
        if final is None:
            return merge_outputs(held) if held else None
        return merge_outputs([*held, final]) if held else final

    def num_tracked(self) -> int:
        return len(self._interval)

    def _merged(self, rid: str, o: RequestOutput) -> RequestOutput:
        held = self._held.pop(rid, None)
        return merge_outputs([*held, o]) if held else o

    def _forget(self, rid: str) -> None:
        self._interval.pop(rid, None)
        self._next.pop(rid, None)
        self._held.pop(rid, None)
