"""`fleetserve serve` and secrets: generated keys shown once on stdout and never through
logging; the admin key from FLEETSERVE_ADMIN_KEY, never from a flag; weak keys refused
beyond loopback, whichever way the host was given."""

from __future__ import annotations

import json
import logging

import pytest

from fleetserve.application.wiring import cluster_config
from fleetserve.cli import serve as serve_cli
from fleetserve.cli.errors import CLIError

STRONG = "fs-admin-Q3v9xLk2pR7tW1mZ8yB4nC6dF0hJ5sGaUe"


def test_demo_keys_are_printed_once_and_never_logged(tmp_path, capsys, caplog, monkeypatch):
    import fleetserve.deployments.direct_ingress as direct

    monkeypatch.setattr(direct, "direct_http_urls", lambda app, host: [])  # no Ray here
    caplog.set_level(logging.DEBUG)  # every logger, every level
    cfg = serve_cli.default_config(tmp_path)
    creds = serve_cli._apply_demo(cfg)
    shipped = json.dumps(cluster_config(cfg).model_dump(mode="json"))
    serve_cli._print_banner(cfg, creds)
    out = capsys.readouterr()
    for secret in (creds.api_key, creds.admin_key):
        assert out.out.count(secret) == 1, "each generated key is shown exactly once"
        assert secret not in out.err and secret not in caplog.text and secret not in shipped
        assert all(secret not in r.getMessage() for r in caplog.records)
    assert secret not in repr(creds)


def test_admin_key_comes_from_the_environment(monkeypatch, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"server: {{host: 0.0.0.0}}\nmodels: [{{name: m, checkpoint: {tmp_path}}}]\n")
    monkeypatch.setenv(serve_cli.ADMIN_KEY_ENV, STRONG)
    cfg = serve_cli._load_config(serve_cli.ServeOptions(config=str(cfg_file)), progress=None)
    assert cfg.server.admin_key == STRONG and STRONG not in json.dumps(cluster_config(cfg).model_dump(mode="json"))
    monkeypatch.setenv(serve_cli.ADMIN_KEY_ENV, "change-me-admin-key-0123456789")
    with pytest.raises(CLIError, match="refusing to serve the admin API on 0.0.0.0") as info:
        serve_cli._load_config(serve_cli.ServeOptions(config=str(cfg_file)), progress=None)
    assert info.value.exit_code == 2 and "change-me-admin-key-0123456789" not in str(info.value)


def test_a_host_flag_is_checked_like_the_file(monkeypatch, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"server: {{admin_key: fs-admin-short-key-1}}\nmodels: [{{name: m, checkpoint: {tmp_path}}}]\n")
    monkeypatch.delenv(serve_cli.ADMIN_KEY_ENV, raising=False)
    assert serve_cli._load_config(serve_cli.ServeOptions(config=str(cfg_file)), progress=None).server.host == "127.0.0.1"
    with pytest.raises(CLIError, match="refusing"):
        serve_cli._load_config(serve_cli.ServeOptions(config=str(cfg_file), host="0.0.0.0"), progress=None)
