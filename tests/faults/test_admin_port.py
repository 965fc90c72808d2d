"""The admin API on its own port (``server.admin_port``), end to end on the fault app: the
ingress replica serves /admin/* there and refuses it on the tenant port."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.harness import KEY

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.redis]


def test_admin_routes_live_only_on_the_admin_port(healthy):
    app = healthy
    assert app.admin("GET", "/admin/tenants").status_code == 200
    assert httpx.get(app.admin_url + "/admin/tenants", timeout=30).status_code == 401
    assert httpx.get(app.admin_url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 404
    tenant_port = httpx.get(app.base_url + "/admin/tenants", headers={"Authorization": "Bearer x"}, timeout=30)
    assert tenant_port.status_code == 404  # not even a 401: the route does not exist there
    assert httpx.get(app.base_url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 200
