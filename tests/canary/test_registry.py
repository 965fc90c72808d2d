"""The version registry over the memory store and a real redis-server."""

import pytest

from fleetserve.canary.errors import UnknownVersionError, VersionConflictError
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.store import MemoryCanaryStore, RedisCanaryStore
from fleetserve.canary.versions import VersionState

from tests.canary.factories import make_version


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request):
    if request.param == "memory":
        s = MemoryCanaryStore()
    else:
        s = RedisCanaryStore.from_url(request.getfixturevalue("redis_url"), timeout_s=2.0)
    yield s
    await s.close()


async def test_register_get_list_and_duplicate(store):
    reg = VersionRegistry(store)
    v1 = await reg.register(make_version("v1", engine_args={"max_model_len": 256}))
    await reg.register(make_version("v2"))
    assert await reg.get("m", "v1") == v1
    assert [v.version_id for v in await reg.versions("m")] == ["v1", "v2"]
    assert await reg.versions("other") == [] and await reg.get("m", "v9") is None
    with pytest.raises(VersionConflictError, match="m@v1 is already registered"):
        await reg.register(make_version("v1", checkpoint="/elsewhere"))
    assert (await reg.get("m", "v1")).checkpoint == "/ckpt/v1"  # the first registration stands


async def test_weights_are_normalised_and_name_only_known_unblocked_versions(store):
    reg = VersionRegistry(store)
    assert await reg.weights("m") == {}
    for vid in ("v1", "v2", "v3"):
        await reg.register(make_version(vid))
    assert await reg.set_weights("m", {"v1": 95, "v2": 5, "v3": 0}) == {"v1": 0.95, "v2": 0.05}
    assert await reg.weights("m") == {"v1": 0.95, "v2": 0.05}
    with pytest.raises(UnknownVersionError, match="m@v9"):
        await reg.set_weights("m", {"v1": 0.5, "v9": 0.5})
    await reg.set_state("m", "v3", VersionState.BLOCKED, "checksum mismatch")
    with pytest.raises(VersionConflictError, match="blocked \\(checksum mismatch\\)"):
        await reg.set_weights("m", {"v1": 0.5, "v3": 0.5})
    for bad in ({"v1": -1.0}, {"v1": 0.0}, {"v1": float("inf")}):
        with pytest.raises(VersionConflictError, match="weights"):
            await reg.set_weights("m", bad)
    assert await reg.weights("m") == {"v1": 0.95, "v2": 0.05}  # refused changes left it alone


async def test_state_changes_persist_and_a_version_with_traffic_is_not_removed(store):
    reg = VersionRegistry(store)
    await reg.register(make_version("v1"))
    await reg.register(make_version("v2"))
    await reg.set_weights("m", {"v1": 1.0})
    v2 = await reg.set_state("m", "v2", VersionState.BLOCKED, "warmup failed")
    assert (await reg.get("m", "v2")) == v2 and v2.blocked_reason == "warmup failed"
    with pytest.raises(VersionConflictError, match="still carries traffic"):
        await reg.remove("m", "v1")
    await reg.remove("m", "v2")
    assert await reg.get("m", "v2") is None
    with pytest.raises(UnknownVersionError):
        await reg.set_state("m", "v2", VersionState.STABLE)


async def test_rollout_state_is_kept_per_model(store):
    reg = VersionRegistry(store)
    assert await reg.load_rollout("m") is None
    await reg.save_rollout("m", '{"phase": "canary"}')
    assert await reg.load_rollout("m") == '{"phase": "canary"}'


@pytest.mark.redis
async def test_two_registries_share_one_redis(redis_url):
    a, b = (VersionRegistry(RedisCanaryStore.from_url(redis_url, timeout_s=2.0)) for _ in range(2))
    await a.register(make_version("v1"))
    await a.set_weights("m", {"v1": 1.0})
    assert [v.version_id for v in await b.versions("m")] == ["v1"] and await b.weights("m") == {"v1": 1.0}
    with pytest.raises(VersionConflictError):
        await b.register(make_version("v1"))
