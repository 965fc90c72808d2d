"""The shape every canary store shares, written once: in Redis a client under one key prefix,
in memory a bounded map whose entries expire.

``store.py`` (the registry's and the executor's JSON tables, the executor lease) and
``ab_store.py`` (response ids, feedback claims, per-variant counters) both build on it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, ClassVar, Generic, Optional, TypeVar

import redis.asyncio as aioredis

from fleetserve.tenants.store import make_redis_client

V = TypeVar("V")


def ttl_ms(ttl_s: float) -> int:
    """A Redis ``PX`` argument: at least 1 ms (0 would be an error, not 'expire now')."""
    return max(1, int(ttl_s * 1000))


class RedisBacked:
    """One Redis client under a key prefix (``PREFIX`` unless given). Methods of a subclass
    raise ``fleetserve.tenants.store.STORE_ERRORS`` when Redis is unreachable."""

    PREFIX: ClassVar[str] = "fleetserve:"

    def __init__(self, client: aioredis.Redis, prefix: Optional[str] = None) -> None:
        self._r = client
        self._p = self.PREFIX if prefix is None else prefix

    @classmethod
    def from_url(cls, url: str, prefix: Optional[str] = None, timeout_s: float = 0.5):
        return cls(make_redis_client(url, timeout_s), prefix)

    def key(self, name: str) -> str:
        return self._p + name

    async def close(self) -> None:
        await self._r.aclose()


class ExpiringMap(Generic[V]):
    """Process-local ``key -> value`` entries with a time to live; at most ``max_items``
    (the oldest written dropped first; None: unbounded)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_items: Optional[int] = None) -> None:
        self._rows: OrderedDict[str, tuple[V, float]] = OrderedDict()
        self._now = clock
        self._max = max_items

    def get(self, key: str) -> Optional[V]:
        row = self._rows.get(key)
        return row[0] if row is not None and row[1] > self._now() else None

    def put(self, key: str, value: V, ttl_s: float) -> None:
        self._rows[key] = (value, self._now() + ttl_s)
        self._rows.move_to_end(key)
        while self._max is not None and len(self._rows) > self._max:
            self._rows.popitem(last=False)

    def put_new(self, key: str, value: V, ttl_s: float) -> bool:
        """Store only if ``key`` is absent or expired; True when stored."""
        if self.get(key) is not None:
            return False
        self.put(key, value, ttl_s)
        return True
