"""Merging the engine streams of one API request (one per prompt and choice) into one.

A request with several prompts or ``n > 1`` runs as several engine requests. Their outputs
arrive interleaved; everything that arrived for a choice while the consumer was busy goes
out as ONE :class:`ChoiceEvent` (``merge_outputs``), so each SSE event carries all tokens
ready now. One stream needs no pump task and queue in between.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Optional

from fleetserve.engine.process.pacing import merge_outputs
from fleetserve.engine.protocol import RequestOutput

PUMP_QUEUE_PER_STREAM = 8  # outputs held per engine stream while the consumer is busy


@dataclass
class ChoiceEvent:
    """An incremental output of choice ``index`` (= prompt_index * n + i)."""

    index: int
    output: RequestOutput


async def merge_streams(streams: list[tuple[int, AsyncIterator[RequestOutput]]]) -> AsyncIterator[ChoiceEvent]:
    """Events of every ``(choice index, stream)``; closing this closes every stream at once
    (which cancels the replicas' work)."""
    if len(streams) == 1:
        index, stream = streams[0]
        try:
            async for out in stream:
                yield ChoiceEvent(index, out)
        finally:
            await stream.aclose()  # a consumer that left early cancels the request now
        return
    # Bounded: a consumer that stops (a slow SSE client) stops the pumps, so the replica
    # link's per-stream flow control reaches the replicas instead of this queue growing.
    queue: asyncio.Queue = asyncio.Queue(maxsize=PUMP_QUEUE_PER_STREAM * len(streams))
    done = object()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                await queue.put(ChoiceEvent(index, out))
            await queue.put(done)
        except asyncio.CancelledError:
            raise  # the consumer left: nobody would read a queued error (and the queue may be full)
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            await queue.put(exc)
        finally:
            await stream.aclose()

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in streams]
    remaining = len(tasks)
    try:
        while remaining:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            finished, events, error = _sort(items, done)
            remaining -= finished
            for ev in events:
                yield ev
            if error is not None:
                raise error
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sort(items: list, done: object) -> tuple[int, list[ChoiceEvent], Optional[BaseException]]:
    """(streams that ended, one merged event per choice, the first error) of one batch."""
    finished = 0
    pending: dict[int, list[RequestOutput]] = {}
    for item in items:
        if item is done:
            finished += 1
        elif isinstance(item, BaseException):
            return finished, _merged(pending), item
        else:
            pending.setdefault(item.index, []).append(item.output)
    return finished, _merged(pending), None


def _merged(pending: dict[int, list[RequestOutput]]) -> list[ChoiceEvent]:
    return [ChoiceEvent(index, merge_outputs(outs)) for index, outs in pending.items()]
