"""Quotas with a real redis-server: one quota shared by two ingress replicas, and Redis outages."""

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.errors import RateLimitError, ServiceUnavailableError
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.tenants.factories import make_config, make_spec

pytestmark = pytest.mark.redis


def replicas(redis_url, n=2, **cfg):
    """``n`` independent gatekeepers (separate clients and caches), like n ingress replicas."""
    spec = make_spec(id="acme", key="fs-acme", quotas={"requests_per_min": 4, "tokens_per_min": 1000})
    config = make_config(spec, redis_url=redis_url, redis_retry_interval_s=0.05, **cfg)
    return [TenantGatekeeper(config, metrics_registry=CollectorRegistry()) for _ in range(n)]


async def admit(gk, rid, prompt=10, max_tokens=10):
    ctx = await gk.authenticate("fs-acme")
    return await gk.reserve_quota(ctx, "tiny", rid, prompt, max_tokens)


async def test_two_replicas_enforce_one_shared_quota(redis_url):
    a, b = replicas(redis_url)
    await admit(a, "1")
    await admit(b, "2")
    await admit(a, "3")
    await admit(b, "4")
    for gk, rid in ((a, "5"), (b, "6")):
        with pytest.raises(RateLimitError) as e:
            await admit(gk, rid)
        assert 0 < e.value.retry_after_s <= 15.0  # one request at 4/min refills in 15 s


async def test_token_quota_is_shared_and_reconciled_across_replicas(redis_url):
    a, b = replicas(redis_url)
    big = await admit(a, "1", prompt=100, max_tokens=800)  # charges 900 of 1000
    with pytest.raises(RateLimitError, match="tokens_per_min"):
        await admit(b, "2", prompt=100, max_tokens=100)
    await a.complete(big, 100, 50, "ok")  # used 150: 750 refunded in Redis
    await admit(b, "2", prompt=100, max_tokens=100)
    usage = await b.usage("fs-admin-test", "acme")
    assert usage["acme"]["tiny"]["requests"] == 1 and usage["acme"]["tiny"]["completion_tokens"] == 50
    assert usage["acme"]["tiny"]["rejected"] == 1


async def test_concurrency_limit_is_shared(redis_url):
    spec = make_spec(id="acme", key="fs-acme", quotas={"max_concurrent": 1})
    a, b = (TenantGatekeeper(make_config(spec, redis_url=redis_url), metrics_registry=CollectorRegistry()) for _ in range(2))
    first = await admit(a, "1")
    with pytest.raises(RateLimitError, match="max_concurrent"):
        await admit(b, "2")
    await a.complete(first, 10, 1, "ok")
    await admit(b, "2")


async def test_redis_down_fail_open_serves_from_local_buckets_and_recovers(redis_server, redis_url):
    a, b = replicas(redis_url, redis_failure_mode="fail_open")
    await admit(a, "1")
    await admit(b, "2")  # 2 of the shared 4 used
    redis_server.stop()
    # Local buckets: each replica now allows its own 4/min (never a crash, never a 5xx).
    for i in range(4):
        adm = await admit(a, f"down-{i}")
        await a.complete(adm, 10, 1, "ok")  # metering buffers while Redis is down
    with pytest.raises(RateLimitError):
        await admit(a, "down-5")
    redis_server.start()  # empty Redis: the shared buckets start full again
    await wait_for_redis(a)
    admitted = [await admit(b if i % 2 else a, f"up-{i}") for i in range(4)]
    with pytest.raises(RateLimitError):
        await admit(b, "up-5")
    assert a.quotas.redis_healthy
    # Usage recorded during the outage is flushed with a's next write and seen by b.
    await a.complete(admitted[0], 10, 1, "ok")
    usage = await b.usage("fs-admin-test", "acme")
    assert usage["acme"]["tiny"]["requests"] == 5


async def test_redis_down_fail_closed_gives_503_and_recovers(redis_server, redis_url):
    (a,) = replicas(redis_url, n=1, redis_failure_mode="fail_closed")
    await admit(a, "1")
    redis_server.stop()
    with pytest.raises(ServiceUnavailableError) as e:
        await admit(a, "2")
    assert e.value.retry_after_s > 0
    ctx = await a.authenticate("fs-acme")  # auth keeps working from the cached registry
    assert ctx.tenant_id == "acme"
    redis_server.start()
    await wait_for_redis(a)
    await admit(a, "3")


async def wait_for_redis(gk, timeout_s=5.0):
    """Retry admissions until the replica has reconnected (condition wait, no fixed sleep)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await gk.quotas._redis.ping()
            break
        except Exception:
            assert loop.time() < deadline, "redis did not come back"
            await asyncio.sleep(0.02)
    while not gk.quotas.redis_healthy:  # the retry interval (0.05 s) has to pass
        assert loop.time() < deadline
        await asyncio.sleep(0.01)


async def test_start_with_redis_down_fail_open_then_registry_reaches_redis(redis_server, redis_url):
    redis_server.stop()
    (a,) = replicas(redis_url, n=1, redis_failure_mode="fail_open")
    await admit(a, "1")  # started from the YAML/inline tenants, local buckets
    (closed,) = replicas(redis_url, n=1, redis_failure_mode="fail_closed")
    with pytest.raises(ServiceUnavailableError):
        await closed.authenticate("fs-acme")
    redis_server.start()
    await wait_for_redis(a)
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while await a._store.version() == 0:  # the replica writes its registry into the empty Redis
        assert loop.time() < deadline
        await a.authenticate("fs-acme")
        await asyncio.sleep(0.02)
    (b,) = replicas(redis_url, n=1)
    assert (await b.authenticate("fs-acme")).tenant_id == "acme"
