"""Where tenant state lives: a small async store protocol, in memory or in Redis.

The registry keeps tenant specs and a version counter here; metering keeps usage
counters here. Quotas talk to Redis directly (they need a Lua script), see ``quota.py``.

Redis layout (prefix ``fleetserve:`` by default):
- ``tenants``            hash  tenant id -> TenantSpec JSON
- ``tenants:version``    int   bumped on every change; ingress replicas poll it
- ``tenants:seeded``     flag  set once the YAML registry was copied into Redis
- ``usage:<tenant>``     hash  "<model>|<field>" -> counter
- ``usage:tenants``      set   tenant ids with usage
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from fleetserve.tenants.config import TenantSpec

# Exceptions meaning "the store is unreachable" (as opposed to a bug in our code).
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, ConnectionError, TimeoutError)

Usage = dict[str, dict[str, dict[str, int]]]  # tenant -> model -> field -> count


class TenantStore(Protocol):
    """Persistence for the registry and usage counters. Methods raise STORE_ERRORS when unreachable."""

    async def load_tenants(self) -> dict[str, TenantSpec]: ...

    async def put_tenant(self, spec: TenantSpec) -> int: ...

    async def delete_tenant(self, tenant_id: str) -> int: ...

    async def version(self) -> int: ...

    async def claim_seed(self) -> bool: ...

    async def restore(self, tenants: list[TenantSpec], min_version: int) -> int: ...

    async def add_usage(self, tenant_id: str, model: str, deltas: dict[str, int]) -> None: ...

    async def read_usage(self, tenant_id: Optional[str] = None) -> Usage: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Process-local store (no Redis configured). Versions still advance so code paths match."""

    def __init__(self) -> None:
        self._tenants: dict[str, str] = {}
        self._version = 0
        self._seeded = False
        self._usage: Usage = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))

    async def load_tenants(self) -> dict[str, TenantSpec]:
        return {k: TenantSpec.model_validate_json(v) for k, v in self._tenants.items()}

    async def put_tenant(self, spec: TenantSpec) -> int:
        self._tenants[spec.id] = spec.model_dump_json()
        self._version += 1
        return self._version

    async def delete_tenant(self, tenant_id: str) -> int:
        self._tenants.pop(tenant_id, None)
        self._version += 1
        return self._version

    async def version(self) -> int:
        return self._version

    async def claim_seed(self) -> bool:
        first, self._seeded = not self._seeded, True
        return first

    async def restore(self, tenants: list[TenantSpec], min_version: int) -> int:
        self._tenants = {t.id: t.model_dump_json() for t in tenants}
        self._version = max(self._version, min_version) + 1
        return self._version

    async def add_usage(self, tenant_id: str, model: str, deltas: dict[str, int]) -> None:
        for k, v in deltas.items():
            if v:
                self._usage[tenant_id][model][k] += int(v)

    async def read_usage(self, tenant_id: Optional[str] = None) -> Usage:
        ids = [tenant_id] if tenant_id is not None else list(self._usage)
        return {t: {m: dict(f) for m, f in self._usage[t].items()} for t in ids if t in self._usage}

    async def close(self) -> None:
        return None


class RedisStore:
    """Redis-backed store shared by every ingress replica."""

    def __init__(self, client: aioredis.Redis, prefix: str = "fleetserve:") -> None:
        self._r = client
        self._p = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "fleetserve:", timeout_s: float = 0.5) -> "RedisStore":
        return cls(make_redis_client(url, timeout_s), prefix)

    @property
    def client(self) -> aioredis.Redis:
        return self._r

    def key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def load_tenants(self) -> dict[str, TenantSpec]:
        raw = await self._r.hgetall(self.key("tenants"))
        return {k.decode(): TenantSpec.model_validate_json(v) for k, v in raw.items()}

    async def put_tenant(self, spec: TenantSpec) -> int:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self.key("tenants"), spec.id, spec.model_dump_json())
        pipe.incr(self.key("tenants", "version"))
        return int((await pipe.execute())[1])

    async def delete_tenant(self, tenant_id: str) -> int:
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(self.key("tenants"), tenant_id)
        pipe.incr(self.key("tenants", "version"))
        return int((await pipe.execute())[1])

    async def version(self) -> int:
        v = await self._r.get(self.key("tenants", "version"))
        return int(v) if v is not None else 0

    async def claim_seed(self) -> bool:
        # SET NX: exactly one of several ingress replicas starting at once seeds the YAML.
        return bool(await self._r.set(self.key("tenants", "seeded"), b"1", nx=True))

    async def restore(self, tenants: list[TenantSpec], min_version: int) -> int:
        # One transaction, and a version above every replica's cached one, so no replica
        # ever loads a half-restored registry.
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self.key("tenants"))
        for t in tenants:
            pipe.hset(self.key("tenants"), t.id, t.model_dump_json())
        pipe.set(self.key("tenants", "version"), max(0, min_version) + 1)
        pipe.set(self.key("tenants", "seeded"), b"1")
        await pipe.execute()
        return max(0, min_version) + 1

    async def add_usage(self, tenant_id: str, model: str, deltas: dict[str, int]) -> None:
        pipe = self._r.pipeline(transaction=True)
        for k, v in deltas.items():
            if v:
                pipe.hincrby(self.key("usage", tenant_id), f"{model}|{k}", int(v))
        pipe.sadd(self.key("usage", "tenants"), tenant_id)
        await pipe.execute()

    async def read_usage(self, tenant_id: Optional[str] = None) -> Usage:
        if tenant_id is not None:
            ids = [tenant_id]
        else:
            ids = sorted(m.decode() for m in await self._r.smembers(self.key("usage", "tenants")))
        out: Usage = {}
        for t in ids:
            raw = await self._r.hgetall(self.key("usage", t))
            if not raw:
                continue
            per_model: dict[str, dict[str, int]] = {}
            for field, val in raw.items():
                model, _, name = field.decode().rpartition("|")
                per_model.setdefault(model, {})[name] = int(val)
            out[t] = per_model
        return out

    async def close(self) -> None:
        await self._r.aclose()


def make_redis_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that fails fast when Redis is down (the failure mode then decides)."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry_on_timeout=False,
        # redis-py retries with exponential backoff by default; that turns an outage into
        # multi-second stalls on the request path. Fail at once and let the failure mode act.
        retry=Retry(NoBackoff(), 0),
    )
