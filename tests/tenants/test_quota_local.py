"""Quota buckets in memory (no Redis), driven by a FakeClock."""

import pytest

from fleetserve.clock import FakeClock
from fleetserve.errors import InvalidRequestError, RateLimitError
from fleetserve.tenants.config import QuotaSpec
from fleetserve.tenants.quota import QuotaManager
from tests.tenants.factories import make_config


async def test_requests_per_min_bucket_refills_continuously():
    clock = FakeClock()
    qm = QuotaManager(make_config(), None, clock)
    q = QuotaSpec(requests_per_min=2)
    await qm.acquire("t", q, "r1", 1)
    await qm.acquire("t", q, "r2", 1)
    with pytest.raises(RateLimitError) as e:
        await qm.acquire("t", q, "r3", 1)
    assert e.value.retry_after_s == pytest.approx(30.0)  # 1 token at 2/min
    clock.advance(30.0)
    await qm.acquire("t", q, "r3", 1)
    await qm.acquire("other-tenant", q, "r4", 1)  # tenants do not share buckets


async def test_tokens_charged_at_admission_and_reconciled_at_completion():
    clock = FakeClock()
    qm = QuotaManager(make_config(), None, clock)
    q = QuotaSpec(tokens_per_min=100)
    lease = await qm.acquire("t", q, "r1", 80)  # prompt 20 + max_tokens 60
    with pytest.raises(RateLimitError):
        await qm.acquire("t", q, "r2", 50)
    await qm.release(lease, q, used_tokens=25)  # only 25 used: 55 refunded
    await qm.acquire("t", q, "r2", 50)
    with pytest.raises(InvalidRequestError):
        await qm.acquire("t", q, "r3", 101)  # can never fit


async def test_concurrency_limit():
    qm = QuotaManager(make_config(), None, FakeClock())
    q = QuotaSpec(max_concurrent=1)
    lease = await qm.acquire("t", q, "r1", 1)
    with pytest.raises(RateLimitError, match="max_concurrent"):
        await qm.acquire("t", q, "r2", 1)
    await qm.release(lease, q, 1)
    await qm.acquire("t", q, "r2", 1)
