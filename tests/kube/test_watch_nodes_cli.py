"""`fleetserve watch-nodes` wiring (the loop itself is tested in test_watch_client.py)."""

from __future__ import annotations

from fleetserve.cli.main import main

ARGS = ["watch-nodes", "--namespace", "llm", "--pod-selector", "fleetserve.io/component=ray", "--admin-url", "http://fs:8000"]


def test_refuses_to_start_without_an_admin_key(monkeypatch, capsys):
    monkeypatch.delenv("FLEETSERVE_ADMIN_KEY", raising=False)
    assert main(ARGS) == 2
    assert "no admin key" in capsys.readouterr().err


def test_outside_a_cluster_without_kubeconfig_fails_loudly(monkeypatch):
    import pytest
    from kubernetes.config import ConfigException

    monkeypatch.setenv("FLEETSERVE_ADMIN_KEY", "fs-admin-" + "k" * 20)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigException):
        main(ARGS)
