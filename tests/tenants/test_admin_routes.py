"""Admin REST routes over real HTTP: auth, tenant CRUD, key rotation, scoped usage."""

import httpx
import pytest
from prometheus_client import CollectorRegistry

from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.tenants.admin_server import serve_admin
from tests.tenants.factories import make_config, make_spec

ADMIN = {"Authorization": "Bearer fs-admin-test"}


@pytest.fixture
def server():
    gk = TenantGatekeeper(make_config(make_spec(id="acme", key="fs-acme"), make_spec(id="globex", key="fs-globex")),
                          metrics_registry=CollectorRegistry())
    with serve_admin(gk) as url:
        yield url, gk


def test_admin_routes_need_the_admin_key(server):
    url, _ = server
    assert httpx.get(url + "/admin/tenants").status_code == 401
    r = httpx.get(url + "/admin/tenants", headers={"Authorization": "Bearer fs-acme"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert httpx.get(url + "/admin/tenants", headers={"Authorization": "Bearer fs-nope"}).status_code == 401


def test_crud_and_rotation(server):
    url, gk = server
    r = httpx.post(url + "/admin/tenants", headers=ADMIN, json={"id": "new", "tier": "batch", "quotas": {"requests_per_min": 5}})
    assert r.status_code == 201
    key = r.json()["api_key"]
    listed = httpx.get(url + "/admin/tenants", headers=ADMIN).json()["tenants"]
    assert [t["id"] for t in listed] == ["acme", "globex", "new"]
    assert all("api_key_hashes" not in t for t in listed) and key not in r.text.replace(key, "", 1)
    assert httpx.post(url + "/admin/tenants", headers=ADMIN, json={"id": "new"}).status_code == 409
    assert httpx.post(url + "/admin/tenants", headers=ADMIN, json={"id": "x", "tier": "gold"}).status_code == 400
    r = httpx.patch(url + "/admin/tenants/new", headers=ADMIN, json={"quotas": {"tokens_per_min": 99}})
    assert r.json()["tenant"]["quotas"] == {**r.json()["tenant"]["quotas"], "requests_per_min": 5, "tokens_per_min": 99}
    new_key = httpx.post(url + "/admin/tenants/new/rotate-key", headers=ADMIN).json()["api_key"]
    assert gk.registry.find_by_key(key) is None and gk.registry.find_by_key(new_key).id == "new"
    assert httpx.delete(url + "/admin/tenants/new", headers=ADMIN).status_code == 200
    assert httpx.get(url + "/admin/tenants/new", headers=ADMIN).status_code == 404


def test_usage_is_scoped_to_the_caller(server):
    url, _ = server
    own = httpx.get(url + "/admin/usage", headers={"Authorization": "Bearer fs-acme"})
    assert own.status_code == 200 and set(own.json()["usage"]) <= {"acme"}
    other = httpx.get(url + "/admin/usage", params={"tenant": "globex"}, headers={"Authorization": "Bearer fs-acme"})
    assert other.status_code == 403
    assert httpx.get(url + "/admin/usage").status_code == 401
    assert httpx.get(url + "/admin/usage", params={"tenant": "globex"}, headers=ADMIN).status_code == 200
