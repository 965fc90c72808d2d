"""Where the version registry keeps its records: a small async key/value-table protocol,
in memory or in Redis.

Values are JSON strings; a *table* is a named map of keys to values. Redis layout (prefix
``fleetserve:canary:`` by default), one hash per table:
- ``versions:<model>``  version id -> ModelVersion JSON
- ``weights``           model -> {version id: weight} JSON
- ``rollouts``          model -> RolloutState JSON (the rollout executor's, for restarts)
- ``rollout_*``         the executor's settings, decision log, commands, step windows
  (``fleetserve.canary.rollout_store``); ``lease:<name>`` a plain key with a TTL
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Protocol

from fleetserve.canary.backing import ExpiringMap, RedisBacked, ttl_ms


_LEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


class CanaryStore(Protocol):
    """JSON values in named tables. Methods raise ``fleetserve.tenants.store.STORE_ERRORS``
    when the backing store is unreachable."""

    async def get(self, table: str, key: str) -> Optional[str]: ...

    async def get_all(self, table: str) -> dict[str, str]: ...

    async def put(self, table: str, key: str, value: str) -> None: ...

    async def put_new(self, table: str, key: str, value: str) -> bool:
        """Store only if ``key`` is absent; True when stored (one writer wins a race)."""
        ...

    async def delete(self, table: str, key: str) -> bool: ...

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` for ``ttl_s``; False while another
        holder's lease runs (one rollout executor among the ingress replicas)."""
        ...

    async def close(self) -> None: ...


class MemoryCanaryStore:
    """Process-local tables (no Redis configured, and tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tables: dict[str, dict[str, str]] = {}
        self._leases: ExpiringMap[str] = ExpiringMap(clock)

    async def get(self, table: str, key: str) -> Optional[str]:
        return self._tables.get(table, {}).get(key)

    async def get_all(self, table: str) -> dict[str, str]:
        return dict(self._tables.get(table, {}))

    async def put(self, table: str, key: str, value: str) -> None:
        self._tables.setdefault(table, {})[key] = value

    async def put_new(self, table: str, key: str, value: str) -> bool:
        rows = self._tables.setdefault(table, {})
        if key in rows:
            return False
        rows[key] = value
        return True

    async def delete(self, table: str, key: str) -> bool:
        return self._tables.get(table, {}).pop(key, None) is not None

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        current = self._leases.get(name)
        if current is not None and current != holder:
            return False
        self._leases.put(name, holder, ttl_s)
        return True

    async def close(self) -> None:
        return None


class RedisCanaryStore(RedisBacked):
    """Tables as Redis hashes, shared by every ingress replica and the rollout executor."""

    PREFIX = "fleetserve:canary:"

    async def get(self, table: str, key: str) -> Optional[str]:
        v = await self._r.hget(self.key(table), key)
        return v.decode() if v is not None else None

    async def get_all(self, table: str) -> dict[str, str]:
        raw = await self._r.hgetall(self.key(table))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def put(self, table: str, key: str, value: str) -> None:
        await self._r.hset(self.key(table), key, value)

    async def put_new(self, table: str, key: str, value: str) -> bool:
        return bool(await self._r.hsetnx(self.key(table), key, value))

    async def delete(self, table: str, key: str) -> bool:
        return bool(await self._r.hdel(self.key(table), key))

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        # One script: renew if ours, else take if free (atomic, so two holders never both win).
        return bool(await self._r.eval(_LEASE_LUA, 1, self.key("lease:" + name), holder, ttl_ms(ttl_s)))
