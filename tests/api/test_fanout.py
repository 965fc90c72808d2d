"""merge_streams: several engine streams into one, bounded while the consumer is busy."""

from __future__ import annotations

import asyncio

from fleetserve.api.fanout import PUMP_QUEUE_PER_STREAM, merge_streams
from fleetserve.engine.protocol import RequestOutput


async def test_a_busy_consumer_holds_up_the_streams_instead_of_queueing_them():
    pulled = [0, 0]

    async def endless(i):
        while True:
            pulled[i] += 1
            yield RequestOutput(f"r{i}", "x", [pulled[i]])

    merged = merge_streams([(0, endless(0)), (1, endless(1))])
    first = await merged.__anext__()
    assert first.output.token_ids_delta
    for _ in range(20):
        await asyncio.sleep(0)  # the pumps run while the consumer does not
    held = sum(pulled)
    # What the consumer took in one batch, a full queue again, and one in each pump's hand.
    assert held <= 2 * (2 * PUMP_QUEUE_PER_STREAM) + 2
    for _ in range(20):
        await asyncio.sleep(0)
    assert sum(pulled) == held  # stopped, not growing
    seen = {0: [], 1: []}
    for _ in range(50):
        ev = await merged.__anext__()
        seen[ev.index] += ev.output.token_ids_delta
    assert all(v == list(range(v[0], v[0] + len(v))) for v in seen.values() if v)  # in order, none lost
    await merged.aclose()
