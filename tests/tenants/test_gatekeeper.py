"""Gatekeeper in memory: auth (401/403), model authorization, admission limits, metering, isolation."""

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.errors import (
    AuthenticationError,
    ContextLengthError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitError,
)
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.tenants.factories import make_config, make_spec

ADMIN = "fs-admin-test"


def make_gatekeeper(*specs, **cfg):
    specs = specs or (
        make_spec(id="acme", key="fs-acme", tier="premium", allowed_models=["tiny"],
                  quotas={"requests_per_min": 2, "max_context": 100, "max_tokens_per_request": 50}),
        make_spec(id="globex", key="fs-globex", tier="batch"),
    )
    return TenantGatekeeper(make_config(*specs, **cfg), metrics_registry=CollectorRegistry())


async def test_authenticate_returns_context_from_the_key_only():
    gk = make_gatekeeper()
    ctx = await gk.authenticate("Bearer fs-acme")
    assert (ctx.tenant_id, ctx.tier, ctx.priority) == ("acme", "premium", 0)
    assert ctx.allowed_models == frozenset({"tiny"}) and ctx.max_context == 100
    other = await gk.authenticate("fs-globex")
    assert other.priority == 2 and ctx.cache_salt and ctx.cache_salt != other.cache_salt
    assert (await make_gatekeeper(isolation=False).authenticate("fs-acme")).cache_salt is None


@pytest.mark.parametrize("key", [None, "", "Bearer ", "fs-wrong", "fs-acm", "fs-acme "+"x"])
async def test_missing_or_invalid_key_is_401_without_echoing_the_key(key):
    gk = make_gatekeeper()
    with pytest.raises(AuthenticationError) as e:
        await gk.authenticate(key)
    if key and key.startswith("fs-"):
        assert key not in str(e.value)


async def test_model_not_allowed_is_403():
    gk = make_gatekeeper()
    ctx = await gk.authenticate("fs-acme")
    gk.authorize_model(ctx, "tiny")
    with pytest.raises(PermissionDeniedError):
        gk.authorize_model(ctx, "big")
    gk.authorize_model(await gk.authenticate("fs-globex"), "big")  # null = every model
    assert (await gk.usage(ADMIN, "acme"))["acme"]["big"]["rejected"] == 1  # 403s are metered too


async def test_admin_auth():
    gk = make_gatekeeper()
    await gk.authenticate_admin(f"Bearer {ADMIN}")
    with pytest.raises(AuthenticationError):
        await gk.authenticate_admin(None)
    with pytest.raises(AuthenticationError):
        await gk.authenticate_admin("fs-admin-wrong")
    with pytest.raises(PermissionDeniedError):
        await gk.authenticate_admin("fs-acme")  # a tenant key on an admin endpoint
    with pytest.raises(AuthenticationError):
        await make_gatekeeper(admin_key_hash=None).authenticate_admin(ADMIN)  # admin API disabled


async def test_size_limits_and_rate_limit_are_rejected_and_metered():
    gk = make_gatekeeper()
    ctx = await gk.authenticate("fs-acme")
    with pytest.raises(InvalidRequestError):
        await gk.reserve_quota(ctx, "tiny", "r0", 10, 51)
    with pytest.raises(ContextLengthError):
        await gk.reserve_quota(ctx, "tiny", "r0", 60, 50)
    a1 = await gk.reserve_quota(ctx, "tiny", "r1", 10, 20)
    await gk.reserve_quota(ctx, "tiny", "r2", 10, 20)
    with pytest.raises(RateLimitError) as e:
        await gk.reserve_quota(ctx, "tiny", "r3", 10, 20)
    assert e.value.retry_after_s > 0
    await gk.complete(a1, 10, 7, "ok")
    await gk.complete(a1, 10, 7, "ok")  # idempotent
    usage = await gk.usage(ADMIN, "acme")
    assert usage["acme"]["tiny"] == {"requests": 1, "prompt_tokens": 10, "completion_tokens": 7, "rejected": 3}


async def test_a_tenant_reads_only_its_own_usage():
    gk = make_gatekeeper()
    for key, rid in (("fs-acme", "a"), ("fs-globex", "g")):
        ctx = await gk.authenticate(key)
        await gk.complete(await gk.reserve_quota(ctx, "tiny", rid, 1, 1), 1, 1, "ok")
    assert set(await gk.usage("fs-acme")) == {"acme"}
    with pytest.raises(PermissionDeniedError):
        await gk.usage("fs-acme", "globex")
    with pytest.raises(AuthenticationError):
        await gk.usage("fs-nobody")
    assert set(await gk.usage(ADMIN)) == {"acme", "globex"}


async def test_runtime_changes_apply_without_restart():
    gk = make_gatekeeper()
    await gk.start()
    new_key = await gk.registry.rotate_key("acme")
    with pytest.raises(AuthenticationError):
        await gk.authenticate("fs-acme")
    assert (await gk.authenticate(new_key)).tenant_id == "acme"
    await gk.registry.update("globex", tier="premium")
    assert (await gk.authenticate("fs-globex")).priority == 0


async def test_prometheus_series_carry_the_tenant_label():
    reg = CollectorRegistry()
    gk = TenantGatekeeper(make_config(make_spec(id="acme", key="fs-acme", quotas={"max_tokens_per_request": 5})),
                          metrics_registry=reg)
    ctx = await gk.authenticate("fs-acme")
    await gk.complete(await gk.reserve_quota(ctx, "tiny", "r1", 3, 4), 3, 2, "ok")
    with pytest.raises(InvalidRequestError):
        await gk.reserve_quota(ctx, "tiny", "r2", 3, 6)
    get = reg.get_sample_value
    assert get("fleetserve_tenant_requests_total", {"tenant": "acme", "model": "tiny", "outcome": "ok"}) == 1
    assert get("fleetserve_tenant_completion_tokens_total", {"tenant": "acme", "model": "tiny"}) == 2
    assert get("fleetserve_tenant_rejected_total", {"tenant": "acme", "model": "tiny", "reason": "invalid_request_error"}) == 1
