"""Registry: YAML loading, runtime changes without restart, and sync between replicas via Redis."""

from pathlib import Path

import pytest

from fleetserve.clock import FakeClock
from fleetserve.errors import ConfigError, InvalidRequestError, NotFoundError
from fleetserve.tenants.config import TenantsConfig
from fleetserve.tenants.registry import TenantRegistry, load_tenants_yaml
from fleetserve.tenants.store import MemoryStore, RedisStore
from tests.tenants.factories import make_config, make_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "tenants" / "example.yaml"


def test_example_yaml_loads_and_its_documented_keys_work():
    specs = load_tenants_yaml(EXAMPLE)
    assert [s.tier for s in specs] == ["premium", "standard", "batch"]
    reg = TenantRegistry(TenantsConfig(registry_file=str(EXAMPLE)), MemoryStore())
    import asyncio

    asyncio.run(reg.start())
    assert reg.find_by_key("fs-example-batch-initech-0000000000000000000000").id == "initech-batch"
    assert reg.find_by_key("fs-example-batch-initech-0000000000000000000001") is None


def test_yaml_errors_name_the_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("tenants:\n  - id: ok\n  - id: x\n    weight: -1\n")
    with pytest.raises(ConfigError) as e:
        load_tenants_yaml(p)
    assert "tenants[1].weight" in str(e.value) and e.value.field == "tenants[1].weight"


async def test_runtime_add_update_rotate_remove():
    reg = TenantRegistry(make_config(make_spec(key="fs-k1")), MemoryStore())
    await reg.start()
    assert reg.find_by_key("fs-k1").id == "acme"
    key = await reg.add(make_spec(id="new", tier="batch", api_key_hashes=[]))
    assert key.startswith("fs-") and reg.find_by_key(key).id == "new"
    with pytest.raises(InvalidRequestError):
        await reg.add(make_spec(id="new"))
    with pytest.raises(InvalidRequestError):
        await reg.update("new", tier="gold")
    spec = await reg.update("new", tier="premium", quotas={"requests_per_min": 5})
    assert spec.tier == "premium" and spec.quotas.requests_per_min == 5
    spec = await reg.update("new", quotas={"tokens_per_min": 50})
    assert spec.quotas.requests_per_min == 5 and spec.quotas.tokens_per_min == 50  # merged
    key2 = await reg.rotate_key("new")
    assert reg.find_by_key(key) is None and reg.find_by_key(key2).id == "new"
    key3 = await reg.rotate_key("new", keep_old=True)
    assert reg.find_by_key(key2) and reg.find_by_key(key3)
    await reg.remove("new")
    assert reg.find_by_key(key3) is None
    with pytest.raises(NotFoundError):
        reg.get("new")


@pytest.mark.redis
async def test_two_replicas_see_each_others_changes_through_redis(redis_url):
    clock = FakeClock()
    cfg = make_config(make_spec(key="fs-k1"), redis_url=redis_url, registry_refresh_s=1.0)
    a = TenantRegistry(cfg, RedisStore.from_url(redis_url), clock)
    b = TenantRegistry(cfg, RedisStore.from_url(redis_url), clock)
    await a.start()
    await b.start()  # seeding happened once (SET NX); b just loads
    key = await a.add(make_spec(id="late", api_key_hashes=[]))
    assert b.find_by_key(key) is None  # not yet refreshed
    clock.advance(1.0)
    await b.refresh_if_due()
    assert b.find_by_key(key).id == "late"
    # A restarted replica keeps runtime changes (Redis is the source of truth after seeding).
    c = TenantRegistry(cfg, RedisStore.from_url(redis_url), clock)
    await c.start()
    assert c.find_by_key(key).id == "late"


async def test_fallback_tenants_record_no_store_version_and_the_store_wins_once_it_answers():
    clock = FakeClock()
    store = MemoryStore()
    await store.put_tenant(make_spec(id="stored", key="fs-stored"))
    reg = TenantRegistry(make_config(registry_refresh_s=1.0), store, clock)
    reg.load_fallback({"yaml": make_spec(id="yaml", key="fs-yaml")})
    assert reg.version is None and reg.find_by_key("fs-yaml").id == "yaml"
    clock.advance(1.0)
    await reg.refresh_if_due()  # any version the store reports is newer than none
    assert reg.version == 1 and reg.find_by_key("fs-stored").id == "stored" and reg.find_by_key("fs-yaml") is None


async def test_fallback_tenants_are_written_back_to_an_empty_store():
    clock = FakeClock()
    store = MemoryStore()
    reg = TenantRegistry(make_config(registry_refresh_s=1.0), store, clock)
    reg.load_fallback({"yaml": make_spec(id="yaml", key="fs-yaml")})
    clock.advance(1.0)
    await reg.refresh_if_due()  # version 0 with tenants in hand: the store lost them, restore
    assert await store.version() == 1 and "yaml" in await store.load_tenants()


async def test_a_removed_tenant_is_reported_once_here_and_on_a_peers_reload():
    store = MemoryStore()
    removed_here, removed_peer = [], []
    here = TenantRegistry(make_config(make_spec(key="fs-k1")), store, on_removed=removed_here.append)
    await here.start()
    await here.add(make_spec(id="gone", api_key_hashes=[]))
    clock = FakeClock()
    peer = TenantRegistry(make_config(make_spec(key="fs-k1")), store, clock=clock, on_removed=removed_peer.append)
    await peer.start()
    await here.remove("gone")
    assert removed_here == ["gone"] and removed_peer == []
    clock.advance(3600)
    await peer.refresh_if_due()  # another replica deleted it: seen on the reload
    assert removed_peer == ["gone"]


async def test_gatekeeper_drops_a_deleted_tenants_series():
    from prometheus_client import CollectorRegistry, generate_latest

    from fleetserve.tenants.gatekeeper import TenantGatekeeper

    registry = CollectorRegistry()
    gk = TenantGatekeeper(make_config(make_spec(key="fs-k1")), MemoryStore(), metrics_registry=registry)
    await gk.start()
    await gk.registry.add(make_spec(id="gone", api_key_hashes=[]))
    await gk.metering.record_completion("gone", "m", 3, 2, "ok")
    await gk.metering.record_completion("acme", "m", 3, 2, "ok")
    assert 'tenant="gone"' in generate_latest(registry).decode()
    await gk.registry.remove("gone")
    text = generate_latest(registry).decode()
    assert 'tenant="gone"' not in text and 'tenant="acme"' in text
