"""The REST edge hands the pin header to stage 3 with whether this caller may pin."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.api.rest import ADMIN_KEY_HEADER, _version_pin
from fleetserve.canary.serving import VersionTable
from fleetserve.errors import AuthenticationError
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.api.test_chunk_format import make_job
from tests.tenants.factories import make_config, make_spec

PIN = "x-fleetserve-version"


class FakeRequest:
    def __init__(self, headers):
        self.headers = headers


class FakeService:
    def __init__(self, gatekeeper):
        self.gatekeeper = gatekeeper
        self.versions = VersionTable({})


@pytest.fixture
def service():
    gk = TenantGatekeeper(make_config(make_spec(id="plain", key="fs-plain"),
                                      make_spec(id="pinner", key="fs-pinner", may_pin_version=True)),
                          metrics_registry=CollectorRegistry())
    return FakeService(gk)


async def pin_for(service, key, headers):
    ctx = await service.gatekeeper.authenticate(key)
    job = make_job(ctx=ctx)
    await _version_pin(service, FakeRequest(headers), ctx, job)
    return job.pinned_version, job.may_pin


async def test_only_flagged_tenants_and_the_admin_key_may_pin(service):
    assert await pin_for(service, "fs-plain", {}) == (None, False)
    assert await pin_for(service, "fs-plain", {PIN: "v2"}) == ("v2", False)
    assert await pin_for(service, "fs-pinner", {PIN: "v2"}) == ("v2", True)
    assert await pin_for(service, "fs-plain", {PIN: "v2", ADMIN_KEY_HEADER: "fs-admin-test"}) == ("v2", True)
    with pytest.raises(AuthenticationError):
        await pin_for(service, "fs-plain", {PIN: "v2", ADMIN_KEY_HEADER: "fs-wrong"})
