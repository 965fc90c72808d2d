"""Where the A/B analysis keeps its state: response ids (with a time to live), and each
variant's counters. In memory (one ingress replica, tests) or in Redis (shared).

Redis layout (prefix ``fleetserve:ab:``):
- ``req:<request id>``        ServedRequest JSON, expires after ``feedback.retention_s``
- ``fb:<request id>``         set once feedback for the id is recorded (one per response)
- ``variant:<model>:<ver>``   hash of counters (see :mod:`fleetserve.canary.ab_records`)
- ``variants:<model>``        set of the model's version ids that have counters
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Mapping, Optional, Protocol

import redis.asyncio as aioredis

from fleetserve.canary.ab_records import FIRST_SEEN, LAST_SEEN, ServedRequest
from fleetserve.tenants.store import make_redis_client


class ABStore(Protocol):
    """Methods raise ``fleetserve.tenants.store.STORE_ERRORS`` when the backing store is down."""

    async def remember(self, served: ServedRequest, increments: Mapping[str, float], ttl_s: float) -> None:
        """Keep ``served`` for ``ttl_s`` and add ``increments`` to its variant's counters."""
        ...

    async def recall(self, request_id: str) -> Optional[ServedRequest]: ...

    async def claim_feedback(self, request_id: str, ttl_s: float) -> bool:
        """True the first time feedback for ``request_id`` is claimed (one outcome per response)."""
        ...

    async def add(self, model: str, version: str, increments: Mapping[str, float], now: float) -> None: ...

    async def totals(self, model: str) -> dict[str, dict[str, float]]:
        """Version -> its raw counters."""
        ...

    async def close(self) -> None: ...


class MemoryABStore:
    """Process-local; remembers at most ``max_records`` ids (oldest dropped first)."""

    def __init__(self, max_records: int = 100_000, clock=time.time) -> None:
        self._records: OrderedDict[str, tuple[ServedRequest, float]] = OrderedDict()
        self._claimed: OrderedDict[str, float] = OrderedDict()
        self._variants: dict[tuple[str, str], dict[str, float]] = {}
        self._max = max_records
        self._now = clock

    async def remember(self, served: ServedRequest, increments: Mapping[str, float], ttl_s: float) -> None:
        self._put(self._records, served.request_id, (served, self._now() + ttl_s))
        await self.add(served.model, served.version, increments, served.created)

    async def recall(self, request_id: str) -> Optional[ServedRequest]:
        row = self._records.get(request_id)
        if row is None or row[1] <= self._now():
            return None
        return row[0]

    async def claim_feedback(self, request_id: str, ttl_s: float) -> bool:
        expires = self._claimed.get(request_id)
        if expires is not None and expires > self._now():
            return False
        self._put(self._claimed, request_id, self._now() + ttl_s)
        return True

    async def add(self, model: str, version: str, increments: Mapping[str, float], now: float) -> None:
        row = self._variants.setdefault((model, version), {})
        for k, v in increments.items():
            row[k] = row.get(k, 0.0) + v
        row.setdefault(FIRST_SEEN, now)
        row[LAST_SEEN] = max(now, row.get(LAST_SEEN, now))

    async def totals(self, model: str) -> dict[str, dict[str, float]]:
        return {v: dict(row) for (m, v), row in self._variants.items() if m == model}

    async def close(self) -> None:
        return None

    def _put(self, table: OrderedDict, key: str, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max:
            table.popitem(last=False)


class RedisABStore:
    """Shared by every ingress replica; one pipeline (one round trip) per finished request."""

    def __init__(self, client: aioredis.Redis, prefix: str = "fleetserve:ab:") -> None:
        self._r = client
        self._p = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "fleetserve:ab:", timeout_s: float = 0.5) -> "RedisABStore":
        return cls(make_redis_client(url, timeout_s), prefix)

    async def remember(self, served: ServedRequest, increments: Mapping[str, float], ttl_s: float) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.set(self._p + "req:" + served.request_id, served.to_json(), px=max(1, int(ttl_s * 1000)))
        self._count(pipe, served.model, served.version, increments, served.created)
        await pipe.execute()

    async def recall(self, request_id: str) -> Optional[ServedRequest]:
        raw = await self._r.get(self._p + "req:" + request_id)
        return ServedRequest.from_json(request_id, raw.decode()) if raw is not None else None

    async def claim_feedback(self, request_id: str, ttl_s: float) -> bool:
        return bool(await self._r.set(self._p + "fb:" + request_id, b"1", nx=True, px=max(1, int(ttl_s * 1000))))

    async def add(self, model: str, version: str, increments: Mapping[str, float], now: float) -> None:
        pipe = self._r.pipeline(transaction=False)
        self._count(pipe, model, version, increments, now)
        await pipe.execute()

    async def totals(self, model: str) -> dict[str, dict[str, float]]:
        versions = sorted(v.decode() for v in await self._r.smembers(f"{self._p}variants:{model}"))
        out = {}
        for v in versions:
            raw = await self._r.hgetall(f"{self._p}variant:{model}:{v}")
            out[v] = {k.decode(): float(x) for k, x in raw.items()}
        return out

    async def close(self) -> None:
        await self._r.aclose()

    def _count(self, pipe, model: str, version: str, increments: Mapping[str, float], now: float) -> None:
        key = f"{self._p}variant:{model}:{version}"
        pipe.sadd(f"{self._p}variants:{model}", version)
        for k, v in increments.items():
            pipe.hincrbyfloat(key, k, v)
        pipe.hsetnx(key, FIRST_SEEN, repr(now))
        pipe.hset(key, LAST_SEEN, repr(now))
