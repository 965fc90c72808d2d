"""`fleetserve scale | replicas | drain` against a real HTTP server (uvicorn on loopback)
serving the REST app with an in-process scaling controller on a fake cluster."""

from __future__ import annotations

import json

import pytest

from fleetserve.api.rest import build_rest_app
from fleetserve.cli.main import main
from fleetserve.cli.replicas import format_table
from tests.api.test_drain_routes import MODELS, ROWS
from tests.api.test_scaling_routes import setup  # noqa: F401 - the fixture
from tests.fixtures.admin_app import ADMIN, RecordingControl, admin_service
from tests.tenants.admin_server import serve_asgi

KEY = ADMIN["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def server(setup):  # noqa: F811
    client, ctrl, fleet, clock, _ = setup
    app = client._transport.app  # the same REST app, now behind a real socket
    with serve_asgi(app) as url:
        yield url, ctrl, fleet, clock


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


async def test_scale_then_replicas_then_drain(server, capsys):
    url, ctrl, fleet, clock = server
    code, out = run(capsys, "scale", "m", "--min", "2", "--max", "3", "--warm", "1", "--url", url, "--admin-key", KEY)
    assert code == 0 and "m@v1: max_replicas=3, min_replicas=2, warm=1" in out
    code, out = run(capsys, "scale", "m", "--warm", "2", "--url", url, "--admin-key", KEY, "--json")
    assert code == 0 and json.loads(out)["override"] == {"min_replicas": 2, "max_replicas": 3, "warm": 2}
    code, out = run(capsys, "replicas", "--url", url, "--admin-key", KEY, "--json")
    assert code == 0 and [r["state"] for r in json.loads(out)["replicas"]] == ["serving", "standby", "draining"]
    code, out = run(capsys, "replicas", "--url", url, "--admin-key", KEY)
    assert code == 0 and "standby" in out and "spot" in out
    code, out = run(capsys, "scale", "nope", "--warm", "1", "--url", url, "--admin-key", KEY)
    assert code == 1


def test_drain_needs_exactly_one_target(capsys):
    assert main(["drain", "--admin-key", "k"]) == 2
    assert main(["drain", "r1", "--node", "n", "--admin-key", "k"]) == 2


def test_drain_reaches_the_replica_control(capsys):
    control = RecordingControl()
    with serve_asgi(build_rest_app(admin_service(MODELS, ROWS), control=control)) as url:
        code, out = run(capsys, "drain", "r1", "--url", url, "--admin-key", KEY)
        assert code == 0 and out.strip() == "r1: draining, 1 in flight"
        code, out = run(capsys, "drain", "--node", "n-b", "--url", url, "--admin-key", KEY, "--json")
        assert code == 0 and [r["replica"] for r in json.loads(out)["replicas"]] == ["r2", "r3"]
        code, _ = run(capsys, "drain", "r1", "--resume", "--url", url, "--admin-key", KEY)
    assert control.calls == [("m", "r1", True), ("m", "r2", True), ("other", "r3", True), ("m", "r1", False)]


def test_replicas_table_format():
    text = format_table({"replicas": [{"replica": "r1", "model": "m", "version": "v1", "state": "standby",
                                       "node_id": "n-a", "capacity_type": "spot", "running": 0, "waiting": 0,
                                       "kv_usage": 0.0}]})
    assert text.splitlines()[1].split() == ["r1", "m", "v1", "standby", "n-a", "spot", "0", "0", "0.0%"]
