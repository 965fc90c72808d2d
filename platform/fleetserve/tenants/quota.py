"""Per-tenant quotas: requests/min and tokens/min token buckets plus a concurrency limit.

With Redis, one Lua script checks and charges all three atomically, so every ingress
replica enforces the *same* quota. Time comes from Redis ``TIME`` inside the script, so
replicas with skewed clocks still agree. Buckets hold ``limit`` tokens and refill at
``limit/60`` per second; a missing key is a full bucket.

Tokens/min is charged at admission for ``prompt + max_tokens`` (the most the request can
use) and reconciled at completion: the unused part is refunded. Concurrency slots are
leases in a sorted set (score = expiry), so a crashed ingress cannot leak them forever.

When Redis is unreachable: ``fail_open`` serves from per-replica in-memory buckets (the
effective limit is then per replica, not global); ``fail_closed`` raises
ServiceUnavailableError. After a failure Redis is retried every ``redis_retry_interval_s``,
so the shared quota comes back on its own when Redis does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional

import redis.asyncio as aioredis

from fleetserve.clock import Clock, SystemClock
from fleetserve.errors import InvalidRequestError, RateLimitError, ServiceUnavailableError
from fleetserve.tenants.config import QuotaSpec, TenantsConfig
from fleetserve.tenants.store import STORE_ERRORS

log = logging.getLogger(__name__)

Backend = Literal["redis", "local"]

# Returns {ok, wait_s (string: Lua numbers are truncated to integers on return), reason}.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm_cap = tonumber(ARGV[1])
local tpm_cap = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local max_conc = tonumber(ARGV[4])
local lease = tonumber(ARGV[6])
local function level(key, cap)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(v[1])
  if tokens == nil then return cap end
  return math.min(cap, tokens + (now - tonumber(v[2])) * cap / 60.0)
end
local wait = 0
local reason = ''
local r_tokens = 0
local t_tokens = 0
if rpm_cap > 0 then
  r_tokens = level(KEYS[1], rpm_cap)
  if r_tokens < 1 then wait = (1 - r_tokens) * 60.0 / rpm_cap; reason = 'requests_per_min' end
end
if tpm_cap > 0 then
  t_tokens = level(KEYS[2], tpm_cap)
  if t_tokens < cost then
    local w = (cost - t_tokens) * 60.0 / tpm_cap
    if w > wait then wait = w; reason = 'tokens_per_min' end
  end
end
if max_conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max_conc then
    if wait < 1 then wait = 1 end
    reason = 'max_concurrent'
  end
end
if wait > 0 then return {0, tostring(wait), reason} end
if rpm_cap > 0 then
  redis.call('HSET', KEYS[1], 'tokens', r_tokens - 1, 'ts', now)
  redis.call('EXPIRE', KEYS[1], 120)
end
if tpm_cap > 0 then
  redis.call('HSET', KEYS[2], 'tokens', t_tokens - cost, 'ts', now)
  redis.call('EXPIRE', KEYS[2], 120)
end
if max_conc > 0 then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[5])
  redis.call('EXPIRE', KEYS[3], math.ceil(lease) + 60)
end
return {1, '0', ''}
"""

# Refund (or, when usage exceeded the charge, debit) tokens and free the concurrency slot.
_RELEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm_cap = tonumber(ARGV[1])
local refund = tonumber(ARGV[2])
if tpm_cap > 0 and refund ~= 0 then
  local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  local tokens = tonumber(v[1])
  if tokens == nil then tokens = tpm_cap else tokens = math.min(tpm_cap, tokens + (now - tonumber(v[2])) * tpm_cap / 60.0) end
  redis.call('HSET', KEYS[1], 'tokens', math.min(tpm_cap, tokens + refund), 'ts', now)
  redis.call('EXPIRE', KEYS[1], 120)
end
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
"""


@dataclass
class QuotaLease:
    """What ``acquire`` charged; hand it back to ``release`` exactly once."""

    tenant_id: str
    request_id: str
    charged_tokens: int
    backend: Backend


@dataclass
class _Bucket:
    tokens: float
    ts: float

    def level(self, cap: int, now: float) -> float:
        return min(float(cap), self.tokens + (now - self.ts) * cap / 60.0)


class LocalQuotas:
    """The same buckets in process memory: the no-Redis mode and the fail-open fallback."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._inflight: dict[str, set[str]] = {}

    def _level(self, tenant_id: str, kind: str, cap: int, now: float) -> float:
        b = self._buckets.get((tenant_id, kind))
        return float(cap) if b is None else b.level(cap, now)

    def acquire(self, tenant_id: str, q: QuotaSpec, request_id: str, cost: int) -> tuple[bool, float, str]:
        now = self._clock.now()
        wait, reason = 0.0, ""
        r = t = 0.0
        if q.requests_per_min:
            r = self._level(tenant_id, "rpm", q.requests_per_min, now)
            if r < 1:
                wait, reason = (1 - r) * 60.0 / q.requests_per_min, "requests_per_min"
        if q.tokens_per_min:
            t = self._level(tenant_id, "tpm", q.tokens_per_min, now)
            if t < cost and (cost - t) * 60.0 / q.tokens_per_min > wait:
                wait, reason = (cost - t) * 60.0 / q.tokens_per_min, "tokens_per_min"
        inflight = self._inflight.setdefault(tenant_id, set())
        if q.max_concurrent and len(inflight) >= q.max_concurrent:
            wait, reason = max(wait, 1.0), "max_concurrent"
        if wait > 0:
            return False, wait, reason
        if q.requests_per_min:
            self._buckets[(tenant_id, "rpm")] = _Bucket(r - 1, now)
        if q.tokens_per_min:
            self._buckets[(tenant_id, "tpm")] = _Bucket(t - cost, now)
        if q.max_concurrent:
            inflight.add(request_id)
        return True, 0.0, ""

    def release(self, tenant_id: str, q: QuotaSpec, request_id: str, refund: int) -> None:
        now = self._clock.now()
        if q.tokens_per_min and refund:
            t = self._level(tenant_id, "tpm", q.tokens_per_min, now)
            self._buckets[(tenant_id, "tpm")] = _Bucket(min(float(q.tokens_per_min), t + refund), now)
        self._inflight.get(tenant_id, set()).discard(request_id)


class QuotaManager:
    """Admission-time quota checks for one ingress replica (shared state in Redis when configured)."""

    def __init__(self, config: TenantsConfig, redis: Optional[aioredis.Redis] = None, clock: Optional[Clock] = None) -> None:
        self._config = config
        self._redis = redis
        self._clock = clock or SystemClock()
        self._local = LocalQuotas(self._clock)
        self._redis_down_until = float("-inf")
        if redis is not None:
            self._acquire_script = redis.register_script(_ACQUIRE_LUA)
            self._release_script = redis.register_script(_RELEASE_LUA)

    @property
    def redis_healthy(self) -> bool:
        return self._redis is not None and self._clock.now() >= self._redis_down_until

    def _keys(self, tenant_id: str) -> list[str]:
        # {tenant} is a hash tag: all of a tenant's keys land in one Redis Cluster slot.
        p = f"{self._config.redis_key_prefix}quota:{{{tenant_id}}}:"
        return [p + "rpm", p + "tpm", p + "inflight"]

    def _mark_down(self, e: BaseException) -> None:
        if self.redis_healthy:
            log.warning("redis unreachable for quotas (%s); mode=%s", type(e).__name__, self._config.redis_failure_mode)
        self._redis_down_until = self._clock.now() + self._config.redis_retry_interval_s

    async def acquire(self, tenant_id: str, quotas: QuotaSpec, request_id: str, cost: int) -> QuotaLease:
        """Charge one request and ``cost`` tokens, or raise RateLimitError / ServiceUnavailableError."""
        if quotas.tokens_per_min is not None and cost > quotas.tokens_per_min:
            # It could never be admitted: answering 429 would make the client retry forever.
            raise InvalidRequestError(
                f"request needs {cost} tokens (prompt + max_tokens) but the tenant's tokens_per_min is {quotas.tokens_per_min}",
                field="max_tokens",
            )
        backend: Backend = "local"
        if self._redis is not None:
            if self.redis_healthy:
                try:
                    ok, wait, reason = await self._acquire_redis(tenant_id, quotas, request_id, cost)
                    backend = "redis"
                except STORE_ERRORS as e:
                    self._mark_down(e)
            if backend != "redis" and self._config.redis_failure_mode == "fail_closed":
                raise ServiceUnavailableError(
                    "quota store unavailable", retry_after_s=self._config.redis_retry_interval_s
                )
        if backend == "local":
            ok, wait, reason = self._local.acquire(tenant_id, quotas, request_id, cost)
        if not ok:
            raise RateLimitError(f"tenant over quota ({reason})", retry_after_s=max(wait, 0.001), field=reason)
        return QuotaLease(tenant_id, request_id, cost, backend)

    async def _acquire_redis(self, tenant_id: str, q: QuotaSpec, request_id: str, cost: int) -> tuple[bool, float, str]:
        args = [q.requests_per_min or 0, q.tokens_per_min or 0, cost, q.max_concurrent or 0, request_id, self._config.concurrency_lease_s]
        ok, wait, reason = await self._acquire_script(keys=self._keys(tenant_id), args=args)
        return bool(int(ok)), float(wait), reason.decode() if isinstance(reason, bytes) else str(reason)

    async def release(self, lease: QuotaLease, quotas: QuotaSpec, used_tokens: int) -> None:
        """Refund ``charged - used`` tokens and free the concurrency slot. Never raises."""
        refund = lease.charged_tokens - used_tokens
        if lease.backend == "local":
            self._local.release(lease.tenant_id, quotas, lease.request_id, refund)
            return
        if not self.redis_healthy:
            return  # the concurrency lease expires by itself; the refund is lost (conservative)
        keys = self._keys(lease.tenant_id)
        try:
            await self._release_script(keys=[keys[1], keys[2]], args=[quotas.tokens_per_min or 0, refund, lease.request_id])
        except STORE_ERRORS as e:
            self._mark_down(e)
