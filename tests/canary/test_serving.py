"""Stage 3's cached split (canary/serving.py) and the service stage that uses it."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.canary.errors import UnknownVersionError
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.serving import VersionTable, route_key
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.canary.versions import VersionState
from fleetserve.clock import FakeClock
from fleetserve.engine.protocol import RequestOutput
from fleetserve.tenants.context import TenantContext
from tests.api.test_chunk_format import make_job
from tests.api.test_service_merge import OpenGatekeeper
from tests.canary.factories import make_version

MODEL = "m"


class CountingStore(MemoryCanaryStore):
    """A memory store that counts reads (the hot path must not read per request)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    async def get(self, table, key):
        self.reads += 1
        return await super().get(table, key)

    async def get_all(self, table):
        self.reads += 1
        return await super().get_all(table)


async def two_versions(weights=None):
    store = CountingStore()
    reg = VersionRegistry(store)
    await reg.register(make_version("v1"))
    await reg.register(make_version("v2"))
    if weights:
        await reg.set_weights(MODEL, weights)
    return store, reg


def choose(table, user="u", tenant="t", pinned=None, may_pin=False):
    return table.choose(MODEL, user=user, tenant_id=tenant, pinned=pinned, may_pin=may_pin)


async def test_no_registry_serves_the_stable_version_and_reads_nothing():
    table = VersionTable({MODEL: "v1"})
    await table.refresh_if_due(MODEL)
    assert choose(table).version == "v1"
    assert choose(table, pinned="v2", may_pin=False).version == "v1"  # an unhonoured pin is ignored
    with pytest.raises(UnknownVersionError):
        choose(table, pinned="v2", may_pin=True)


async def test_split_is_sticky_per_user_and_covers_both_versions():
    store, reg = await two_versions({"v1": 1, "v2": 1})
    table = VersionTable({MODEL: "v1"}, reg, FakeClock())
    await table.refresh_if_due(MODEL)
    picks = {f"user{i}": choose(table, user=f"user{i}").version for i in range(200)}
    assert set(picks.values()) == {"v1", "v2"}
    for user, version in picks.items():
        assert choose(table, user=user).version == version
    # no user: the tenant is the sticky key
    assert len({choose(table, user=None, tenant="t9").version for _ in range(10)}) == 1


async def test_refresh_reads_the_store_at_most_every_interval():
    clock = FakeClock()
    store, reg = await two_versions({"v1": 1})
    table = VersionTable({MODEL: "v1"}, reg, clock, refresh_s=5.0)
    await table.refresh_if_due(MODEL)
    reads = store.reads
    for _ in range(100):
        await table.refresh_if_due(MODEL)
        choose(table)
    assert store.reads == reads
    await reg.set_weights(MODEL, {"v2": 1})
    assert choose(table).version == "v1"  # cached
    clock.advance(5.0)
    await table.refresh_if_due(MODEL)
    assert choose(table).version == "v2"


async def test_pins_honoured_only_when_allowed_and_blocked_versions_get_nothing():
    store, reg = await two_versions({"v1": 1})
    clock = FakeClock()
    table = VersionTable({MODEL: "v1"}, reg, clock, refresh_s=1.0)
    await table.refresh_if_due(MODEL)
    assert choose(table, pinned="v2", may_pin=False).version == "v1"
    c = choose(table, pinned="v2", may_pin=True)
    assert (c.version, c.reason) == ("v2", "pinned")  # zero weight, still pinnable
    await reg.set_state(MODEL, "v2", VersionState.BLOCKED, "checksum mismatch")
    clock.advance(1.0)
    await table.refresh_if_due(MODEL)
    with pytest.raises(UnknownVersionError):
        choose(table, pinned="v2", may_pin=True)
    assert {choose(table, user=f"u{i}").version for i in range(50)} == {"v1"}


def test_route_key_names_the_stable_deployment_by_the_alias():
    assert route_key("m", "v1", "v1") == "m"
    assert route_key("m", "v2", "v1") == "m@v2"


class RecordingClient:
    def __init__(self):
        self.routes = []

    async def generate(self, request, route):
        self.routes.append(route.model)
        yield RequestOutput("x", "a", [1], finished=True, finish_reason="length", completion_tokens=1)

    async def model_info(self, model):
        raise NotImplementedError


async def run_job(service, **job_fields):
    job = make_job(n=1, **job_fields)
    async with aclosing(service.run(job)) as stream:
        async for _ in stream:
            pass
    return job


async def test_service_stage3_routes_labels_and_fingerprints_the_chosen_version():
    client = RecordingClient()
    spec = ModelSpec('tiny "m"', "/x")  # the job factory's model name
    reg2 = VersionRegistry(MemoryCanaryStore())
    for v in ("v1", "v2"):
        await reg2.register(make_version(v, model=spec.name))
    await reg2.set_weights(spec.name, {"v2": 1})
    table = VersionTable({spec.name: "v1"}, reg2, FakeClock())
    service = InferenceService([spec], client, OpenGatekeeper(), versions=table)
    job = await run_job(service, user="alice")
    assert job.version == "v2" and job.fingerprint == 'tiny "m"@v2'
    assert client.routes == ['tiny "m"@v2']
    assert job.labels["version"] == "v2"
    body, _ = service.metrics.render()
    assert b'version="v2"' in body


async def test_service_without_a_split_keeps_todays_route():
    client = RecordingClient()
    service = InferenceService([ModelSpec('tiny "m"', "/x")], client, OpenGatekeeper())
    job = await run_job(service, ctx=TenantContext("t", "premium", 0, 1.0, None), pinned_version="v9")
    assert job.version == "v1" and client.routes == ['tiny "m"']
