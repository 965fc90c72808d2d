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
from typing import Mapping, Optional, Protocol

from fleetserve.canary.ab_records import FIRST_SEEN, LAST_SEEN, ServedRequest
from fleetserve.canary.backing import ExpiringMap, RedisBacked, ttl_ms

# One script call per request, not a pipeline of one HINCRBYFLOAT per field: a request's TPOTs
# touch tens of latency-sketch buckets, and the client-side cost is per command.
_COUNT_FN = """
local function count(hash, set, args, from)
  redis.call('sadd', set, args[from])
  for i = from + 2, #args, 2 do redis.call('hincrbyfloat', hash, args[i], args[i + 1]) end
  redis.call('hsetnx', hash, '%s', args[from + 1])
  redis.call('hset', hash, '%s', args[from + 1])
end
""" % (FIRST_SEEN, LAST_SEEN)
# KEYS: variant hash, variants set; ARGV: version, now, then field, amount pairs.
_COUNT_LUA = _COUNT_FN + "count(KEYS[1], KEYS[2], ARGV, 1)"
# KEYS: the request's key, then _COUNT_LUA's; ARGV: its JSON, its TTL in ms, then _COUNT_LUA's.
_REMEMBER_LUA = _COUNT_FN + "redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])\ncount(KEYS[2], KEYS[3], ARGV, 3)"


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

    def __init__(self, max_records: int = 10_000, clock=time.time) -> None:
        self._records: ExpiringMap[ServedRequest] = ExpiringMap(clock, max_records)
        self._claimed: ExpiringMap[bool] = ExpiringMap(clock, max_records)
        self._variants: dict[tuple[str, str], dict[str, float]] = {}

    async def remember(self, served: ServedRequest, increments: Mapping[str, float], ttl_s: float) -> None:
        self._records.put(served.request_id, served, ttl_s)
        await self.add(served.model, served.version, increments, served.created)

    async def recall(self, request_id: str) -> Optional[ServedRequest]:
        return self._records.get(request_id)

    async def claim_feedback(self, request_id: str, ttl_s: float) -> bool:
        return self._claimed.put_new(request_id, True, ttl_s)

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


class RedisABStore(RedisBacked):
    """Shared by every ingress replica; one script call (one round trip) per finished request."""

    PREFIX = "fleetserve:ab:"

    def __init__(self, client, prefix: Optional[str] = None) -> None:
        super().__init__(client, prefix)
        self._remember = self._r.register_script(_REMEMBER_LUA)
        self._count = self._r.register_script(_COUNT_LUA)

    async def remember(self, served: ServedRequest, increments: Mapping[str, float], ttl_s: float) -> None:
        keys = [self.key("req:" + served.request_id), *self._variant_keys(served.model, served.version)]
        await self._remember(keys, [served.to_json(), ttl_ms(ttl_s),
                                    *self._count_args(served.version, increments, served.created)])

    async def recall(self, request_id: str) -> Optional[ServedRequest]:
        raw = await self._r.get(self.key("req:" + request_id))
        return ServedRequest.from_json(request_id, raw.decode()) if raw is not None else None

    async def claim_feedback(self, request_id: str, ttl_s: float) -> bool:
        return bool(await self._r.set(self.key("fb:" + request_id), b"1", nx=True, px=ttl_ms(ttl_s)))

    async def add(self, model: str, version: str, increments: Mapping[str, float], now: float) -> None:
        await self._count(self._variant_keys(model, version), self._count_args(version, increments, now))

    async def totals(self, model: str) -> dict[str, dict[str, float]]:
        versions = sorted(v.decode() for v in await self._r.smembers(self.key(f"variants:{model}")))
        out = {}
        for v in versions:
            raw = await self._r.hgetall(self.key(f"variant:{model}:{v}"))
            out[v] = {k.decode(): float(x) for k, x in raw.items()}
        return out

    def _variant_keys(self, model: str, version: str) -> list[str]:
        return [self.key(f"variant:{model}:{version}"), self.key(f"variants:{model}")]

    @staticmethod
    def _count_args(version: str, increments: Mapping[str, float], now: float) -> list:
        args: list = [version, repr(now)]
        for k, v in increments.items():
            args += (k, v)
        return args
