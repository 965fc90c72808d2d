"""Metering under concurrent requests while the store is slow or failing: every increment
counted exactly once, never an exception into the request path (the Redis fault test found
a KeyError here that turned finished requests into 500s)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from fleetserve.tenants.metering import Metering
from fleetserve.tenants.store import MemoryStore


class SlowFlakyStore(MemoryStore):
    """Each write yields to the loop first; writes fail while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def add_usage(self, tenant_id, model, deltas):
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("redis is down")
        await super().add_usage(tenant_id, model, deltas)


async def test_concurrent_records_count_once_through_an_outage():
    store = SlowFlakyStore()
    metering = Metering(store, registry=CollectorRegistry())

    async def burst(n: int):
        await asyncio.gather(*(metering.record_completion("t", m, 1, 2, "ok") for m in ("a", "b") for _ in range(n)))

    await burst(20)
    store.down = True
    await burst(15)  # buffered, no exception
    store.down = False
    await burst(5)  # the buffered increments go out with these
    usage = await store.read_usage("t")
    assert {m: usage["t"][m]["requests"] for m in ("a", "b")} == {"a": 40, "b": 40}
    assert usage["t"]["a"]["completion_tokens"] == 80
