"""`fleetserve tenants ...` and `fleetserve usage` against a real admin HTTP server."""

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.cli.main import main
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.tenants.admin_server import serve_admin
from tests.tenants.factories import make_config, make_spec


@pytest.fixture
def url(monkeypatch):
    monkeypatch.setenv("FLEETSERVE_ADMIN_KEY", "fs-admin-test")
    gk = TenantGatekeeper(make_config(make_spec(id="acme", key="fs-acme")), metrics_registry=CollectorRegistry())
    with serve_admin(gk) as u:
        yield u


def test_tenants_lifecycle(url, capsys):
    assert main(["tenants", "add", "bob", "--tier", "batch", "--rpm", "10", "--models", "tiny", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "created tenant bob (batch)" in out and "fs-" in out
    assert main(["tenants", "set-quota", "bob", "--tpm", "500", "--url", url]) == 0
    assert main(["tenants", "list", "--url", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["id", "tier", "weight"]
    bob = next(line.split() for line in table if line.startswith("bob"))
    assert bob[:6] == ["bob", "batch", "1", "tiny", "10", "500"]
    assert main(["tenants", "rotate-key", "bob", "--url", url]) == 0
    assert "old keys no longer work" in capsys.readouterr().out
    assert main(["tenants", "remove", "bob", "--url", url]) == 0
    assert main(["tenants", "remove", "bob", "--url", url]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_usage_and_bad_admin_key(url, capsys):
    assert main(["usage", "--url", url]) == 0
    assert capsys.readouterr().out.split()[:2] == ["tenant", "model"]
    assert main(["usage", "--url", url, "--admin-key", "fs-wrong"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
