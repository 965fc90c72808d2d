"""Coalescing incremental outputs: when a consumer is slower than the engine, everything
already produced for a request travels as ONE :class:`RequestOutput`.

Every hop of the streaming path (engine queue -> replica -> Ray object -> ingress -> SSE
event) has a fixed cost per item, so under load the platform spends its CPU on items rather
than tokens. Merging what is queued *at the moment the consumer asks* adds no latency (the
consumer was busy anyway) and keeps the stream exact: deltas are concatenated in order, so
no token is dropped, repeated or reordered, and since the engine only ever emits text that
can no longer become part of a stop string, concatenation cannot split a stop string either.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import AsyncIterator, Optional, Sequence

from fleetserve.engine.protocol import RequestOutput


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


def paced_generate(engine, request) -> AsyncIterator[RequestOutput]:
    """``engine.generate(request)`` paced at ``request.stream_interval_s``: by the engine itself
    when it sets ``paces_streams`` (native), else by :func:`paced`."""
    stream = engine.generate(request)
    if request.stream_interval_s > 0 and not getattr(engine, "paces_streams", False):
        return paced(stream, request.stream_interval_s)
    return stream
