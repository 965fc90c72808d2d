"""`fleetserve adapters add|list|remove` against the real REST app on a loopback port (the
catalog side; pushing to replicas is tests/api/test_adapters_rest.py and the Ray e2e test)."""

import json

import pytest

from fleetserve.api.adapter_routes import build_adapter_router
from fleetserve.api.rest import build_rest_app
from fleetserve.cli.main import main
from tests.api.rest_harness import ADMIN_KEY, MODEL, ScriptedClient, make_rest
from tests.tenants.admin_server import serve_asgi as serve_app


@pytest.fixture
def url(monkeypatch, tiny_llama_path):
    monkeypatch.setenv("FLEETSERVE_ADMIN_KEY", ADMIN_KEY)
    service = make_rest(ScriptedClient([]), tiny_llama_path).service
    app = build_rest_app(service, routers=(build_adapter_router(service, None),))
    with serve_app(app) as u:
        yield u


def test_adapters_lifecycle(url, capsys, tiny_llama_path, make_adapter):
    path = str(make_adapter(tiny_llama_path, seed=1))
    assert main(["adapters", "add", MODEL, "sql", path, "--alias", "sql-helper", "--url", url]) == 0
    assert f"added {MODEL}:sql" in capsys.readouterr().out
    assert main(["adapters", "list", "--url", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "model", "aliases"]
    assert table[-1].split()[:3] == [f"{MODEL}:sql", MODEL, "sql-helper"]
    assert main(["adapters", "list", "--json", "--url", url]) == 0
    listed = json.loads(capsys.readouterr().out)["adapters"]
    assert [(a["name"], a["path"]) for a in listed] == [(f"{MODEL}:sql", path)]
    assert main(["adapters", "add", MODEL, "sql", path, "--url", url]) == 1
    assert "HTTP 409" in capsys.readouterr().err
    assert main(["adapters", "remove", "sql-helper", "--url", url]) == 0
    assert f"removed {MODEL}:sql" in capsys.readouterr().out
    assert main(["adapters", "remove", f"{MODEL}:sql", "--url", url]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["adapters", "add", MODEL, "x", path, "--url", url, "--admin-key", "fs-wrong"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
