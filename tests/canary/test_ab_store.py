"""The A/B store: response ids expire and stay bounded, one feedback per id, counters add up
(in memory, and in a real redis-server shared by two clients as two ingress replicas)."""

from __future__ import annotations

import pytest

from fleetserve.canary.ab_records import ServedRequest, VariantTotals
from fleetserve.canary.ab_store import MemoryABStore, RedisABStore


class Wall:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def served(rid: str = "r1", version: str = "v1") -> ServedRequest:
    return ServedRequest(rid, "acme", "m", version, 1000.0)


async def test_memory_ids_expire_after_their_ttl():
    wall = Wall()
    store = MemoryABStore(clock=wall)
    await store.remember(served(), {"requests": 1}, ttl_s=60)
    assert await store.recall("r1") == served()
    wall.t += 61
    assert await store.recall("r1") is None


async def test_memory_keeps_at_most_max_records_oldest_dropped_first():
    store = MemoryABStore(max_records=3)
    for i in range(5):
        await store.remember(served(f"r{i}"), {"requests": 1}, ttl_s=60)
    assert [await store.recall(f"r{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert VariantTotals.decode((await store.totals("m"))["v1"]).requests == 5  # counters are not bounded


async def test_memory_feedback_is_claimed_once():
    store = MemoryABStore()
    assert await store.claim_feedback("r1", 60) is True
    assert await store.claim_feedback("r1", 60) is False


@pytest.mark.redis
async def test_redis_store_is_shared_and_expires(redis_url):
    a, b = RedisABStore.from_url(redis_url), RedisABStore.from_url(redis_url)
    try:
        await a.remember(served("r1", "v1"), {"requests": 1, "errors": 1, "ttft:2": 1}, ttl_s=60)
        await b.remember(served("r2", "v2"), {"requests": 1}, ttl_s=0.2)
        await b.add("m", "v1", {"fb_binary": 1, "fb_positive": 1}, 1001.0)
        assert await b.recall("r1") == served("r1", "v1")
        totals = {v: VariantTotals.decode(f) for v, f in (await a.totals("m")).items()}
        assert sorted(totals) == ["v1", "v2"]
        assert (totals["v1"].requests, totals["v1"].errors, totals["v1"].ttft.buckets) == (1, 1, {2: 1})
        assert (totals["v1"].feedback_binary, totals["v1"].first_seen, totals["v1"].last_seen) == (1, 1000.0, 1001.0)
        assert await a.claim_feedback("r1", 60) and not await b.claim_feedback("r1", 60)
        import asyncio

        for _ in range(50):  # the 200 ms TTL: wait on the condition, bounded
            if await a.recall("r2") is None:
                break
            await asyncio.sleep(0.05)
        assert await a.recall("r2") is None
    finally:
        await a.close()
        await b.close()
