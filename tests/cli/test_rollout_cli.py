"""`fleetserve versions ...` and `fleetserve rollout ...` against a real HTTP server running the
rollout executor (fake deployments that are ready at once)."""

import json

import pytest

from fleetserve.cli.main import main
from tests.canary.rollout_server import ADMIN, MODEL, checkpoint, serve_rollouts
from tests.fixtures.ray_serve import wait_for


@pytest.fixture
def url(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETSERVE_ADMIN_KEY", ADMIN)
    with serve_rollouts(tmp_path) as u:
        yield u


def status_json(url, capsys) -> dict:
    capsys.readouterr()
    assert main(["rollout", "status", MODEL, "--url", url, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_versions_and_a_rollout_through_every_command(url, tmp_path, capsys):
    v2 = checkpoint(tmp_path, "v2")
    assert main(["versions", "add", MODEL, "v2", "--checkpoint", v2, "--no-deploy", "--url", url]) == 0
    assert "registered m@v2 (sha256:" in capsys.readouterr().out
    assert main(["rollout", "start", MODEL, "--version", "v2", "--steps", "50,100", "--interval", "1m",
                 "--url", url]) == 0
    assert "m: v2 vs v1" in capsys.readouterr().out
    wait_for(lambda: status_json(url, capsys)["phase"] == "canary", 20, "the canary to serve")
    assert main(["rollout", "pause", MODEL, "--url", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["phase"] == "paused"
    assert main(["rollout", "resume", MODEL, "--url", url]) == 0
    assert "phase=canary" in capsys.readouterr().out
    assert main(["rollout", "promote", MODEL, "--url", url, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["phase"] == "promoted" and st["weights"] == {"v2": 1.0} and st["step_interval_s"] == 60
    assert [d["event"] for d in st["decisions"]][-3:] == ["pause", "resume", "promote"]
    assert main(["versions", "list", MODEL, "--url", url]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["v2"][1:4] == ["stable", "ready", "100.0%"] and rows["v1"][1] == "retired"

    # a new version with its checkpoint, rolled back by the operator; --watch ends with it
    v3 = checkpoint(tmp_path, "v3")
    assert main(["rollout", "start", MODEL, "--version", "v3", "--checkpoint", v3, "--url", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stable"] == "v2"
    assert main(["rollout", "rollback", MODEL, "--url", url]) == 0
    assert "operator rollback" in capsys.readouterr().out
    assert main(["rollout", "status", MODEL, "--watch", "--url", url]) == 1  # finished, not promoted
    assert "rolled_back" in capsys.readouterr().out
    assert main(["versions", "remove", MODEL, "v3", "--url", url]) == 0


def test_clear_messages_instead_of_tracebacks(url, capsys):
    assert main(["rollout", "start", MODEL, "--version", "v9", "--interval", "10x", "--url", url]) == 2
    assert "--interval must be a duration" in capsys.readouterr().err
    assert main(["rollout", "status", MODEL, "--url", url]) == 1
    assert "HTTP 404: no rollout of `m` was started" in capsys.readouterr().err
    assert main(["rollout", "start", MODEL, "--version", "v9", "--url", url]) == 1
    assert "not registered; pass its checkpoint" in capsys.readouterr().err
    assert main(["rollout", "start", "nope", "--version", "v9", "--url", url]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["rollout", "pause", MODEL, "--url", url, "--admin-key", "wrong"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    assert main(["versions", "list", MODEL, "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err
