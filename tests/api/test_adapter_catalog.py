"""The adapter catalog: names, aliases, clashes, revisions, and one catalog shared by several
ingress replicas through the store (in memory, and a real redis-server)."""

from __future__ import annotations

import asyncio

import pytest

from fleetserve.api.adapters import AdapterCatalog, AdapterEntry, adapter_revision
from fleetserve.canary.store import MemoryCanaryStore, RedisCanaryStore
from fleetserve.clock import FakeClock
from fleetserve.errors import (ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError,
                               ServiceUnavailableError)



def entry(id: str = "a", aliases=(), base: str = "m") -> AdapterEntry:
    return AdapterEntry(base, id, f"/p/{id}", "rev", tuple(aliases))


async def test_full_names_and_aliases_resolve_to_one_entry():
    cat = AdapterCatalog(["m", "n"])
    e = await cat.put(entry("a", ["alias-a"]))
    assert cat.find("m:a") == e and cat.find("alias-a") == e and cat.find("m") is None
    assert e.ref.name == "m:a" and e.ref.key == "m:a@rev"
    assert await cat.remove("alias-a") == e and cat.find("m:a") is None and cat.find("alias-a") is None
    with pytest.raises(NotFoundError):
        cat.get("m:a")


@pytest.mark.parametrize("clash", [entry("a"), entry("b", ["m:a"]), entry("b", ["n"]), entry("b", ["x", "x"]),
                                   entry("c", ["alias-a"])])
async def test_a_name_in_use_is_a_conflict_and_claims_nothing(clash):
    cat = AdapterCatalog(["m", "n"])
    await cat.put(entry("a", ["alias-a"]))
    with pytest.raises(ConflictError):
        await cat.put(clash)
    assert [e.name for e in cat.list()] == ["m:a"]
    await cat.put(entry("d", ["x"]))  # a clash gave back the names it had claimed (b's, c's)
    await cat.put(entry("b"))


async def test_unknown_model_and_bad_ids_are_refused():
    cat = AdapterCatalog(["m"])
    with pytest.raises(ModelNotFoundError):
        await cat.put(entry(base="nope"))
    with pytest.raises(InvalidRequestError):
        await cat.put(entry(id="a:b"))


def test_revision_changes_with_the_weights(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"one")
    first = adapter_revision(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"two")
    assert adapter_revision(tmp_path) != first
    with pytest.raises(InvalidRequestError):
        adapter_revision(tmp_path / "missing")


# ----- one catalog, several ingress replicas ------------------------------------------------


async def _shared(store, clock) -> None:
    """Two replicas' catalogs over one store: what one adds or removes, the other serves
    after its refresh period; concurrent clashing adds have exactly one winner."""
    one = AdapterCatalog(["m"], store, refresh_s=2.0, clock=clock, seed=[entry("cfg")])
    two = AdapterCatalog(["m"], store, refresh_s=2.0, clock=clock, seed=[entry("cfg")])
    await one.refresh_if_due()
    await two.refresh_if_due()
    assert [e.name for e in two.list()] == ["m:cfg"]  # the config's adapter, written once

    await one.put(entry("a", ["alias-a"]))
    await two.refresh_if_due()
    assert two.find("alias-a") is None  # not due yet: the request path never waits on the store
    clock.advance(2.0)
    await two.refresh_if_due()
    assert two.find("alias-a") == entry("a", ["alias-a"])

    await two.remove("m:a")  # removed through the other replica
    clock.advance(2.0)
    await one.refresh_if_due()
    assert one.find("m:a") is None and one.find("alias-a") is None

    results = await asyncio.gather(one.put(entry("x", ["shared"])), two.put(entry("y", ["shared"])),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["AdapterEntry", "ConflictError"]
    clock.advance(2.0)
    await one.refresh_if_due()
    await two.refresh_if_due()
    assert one.find("shared") == two.find("shared") is not None
    assert [e.name for e in one.list()] == [e.name for e in two.list()]

    three = AdapterCatalog(["m"], store, seed=[entry("cfg", ["other-alias"])])  # a restart: the store wins
    await three.reload()
    assert three.find("m:cfg") == entry("cfg") and three.find("other-alias") is None


async def test_memory_store_shares_one_catalog():
    await _shared(MemoryCanaryStore(), FakeClock(0.0))


@pytest.mark.redis
async def test_redis_store_shares_one_catalog(redis_url):
    stores = [RedisCanaryStore.from_url(redis_url, prefix="fleetserve:") for _ in range(2)]
    try:
        await _shared(stores[0], FakeClock(0.0))
        raw = await stores[1].get_all("adapters")
        assert set(raw) == {"m:cfg", next(n for n in raw if n in ("m:x", "m:y"))}
    finally:
        for s in stores:
            await s.close()


@pytest.mark.redis
async def test_store_down_keeps_serving_the_copy_and_refuses_writes(redis_server, redis_url):
    store = RedisCanaryStore.from_url(redis_url, prefix="fleetserve:")
    clock = FakeClock(0.0)
    cat = AdapterCatalog(["m"], store, refresh_s=1.0, clock=clock)
    try:
        await cat.put(entry("a"))
        redis_server.stop()
        clock.advance(1.0)
        await cat.refresh_if_due()  # logged, not raised: requests keep resolving
        assert cat.find("m:a") == entry("a")
        with pytest.raises(ServiceUnavailableError):
            await cat.put(entry("b"))
    finally:
        redis_server.start()
        await store.close()
