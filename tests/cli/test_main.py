"""The `fleetserve` entry point: --version, --help order, usage errors (exit code 2) and
errors reported as one line without a traceback."""

from __future__ import annotations

import re
import sys
import types

import pytest

from fleetserve import __version__
from fleetserve.cli import serve as serve_cli
from fleetserve.cli import tenants as tenants_cli
from fleetserve.cli.main import COMMAND_ORDER, main, parse_args
from fleetserve.errors import AuthenticationError


def _flat(text: str) -> str:
    """Rich's panel text as one line: box characters and wrapping removed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fleetserve {__version__}"


def test_help_lists_every_command_in_order(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [m.group(1) for m in re.finditer(r"^│ ([a-z][a-z-]*) ", out, re.M)]
    assert listed == list(COMMAND_ORDER)
    assert "--install-completion" in out and "--show-completion" in out


@pytest.mark.parametrize("argv, message", [
    (["nope"], "No such command 'nope'"),
    (["status", "--bogus"], "No such option: --bogus"),
    (["tenants", "add"], "Missing argument"),
    (["simulate", "--profile", "p.yaml"], "exactly one of --trace and --scenario"),
    (["model", "make-tiny", "d", "--preset", "huge"], "'huge' is not one of"),
])
def test_usage_errors_exit_2_with_usage(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: fleetserve") and message in _flat(err)
    assert "Traceback" not in err


def test_group_without_subcommand_prints_its_help_and_exits_2(capsys):
    assert main(["tenants"]) == 2
    assert "set-quota" in capsys.readouterr().out


def test_parse_args_checks_without_running(monkeypatch):
    argv = ["watch-nodes", "--namespace", "n", "--pod-selector", "a=b", "--admin-url", "http://x"]
    assert parse_args(argv)[-1].params["namespace"] == "n"  # nothing ran: no admin key needed
    with pytest.raises(Exception) as info:
        parse_args(argv + ["--no-such-flag"])
    assert info.value.exit_code == 2


def test_unreachable_server_is_one_red_line_not_a_traceback(capsys):
    assert main(["status", "--url", "http://127.0.0.1:9", "--admin-key", "k"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fleetserve status: cannot reach http://127.0.0.1:9") and err.count("\n") == 1
    assert main(["tenants", "list", "--url", "http://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot reach")


def test_package_errors_are_reported_by_main(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AuthenticationError("invalid admin key")

    monkeypatch.setattr(tenants_cli, "admin_request", refuse)
    assert main(["tenants", "list"]) == 1
    assert capsys.readouterr().err == "error: invalid admin key\n"


def test_a_failed_deploy_is_one_line_and_ray_is_shut_down(monkeypatch, capsys):
    calls = []
    fake_ray = types.ModuleType("ray")
    fake_ray.shutdown = lambda: calls.append("ray.shutdown")
    fake_ray.serve = types.SimpleNamespace(shutdown=lambda: calls.append("serve.shutdown"))

    def deploy(cfg):
        raise RuntimeError("replica died: out of memory")

    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setitem(sys.modules, "fleetserve.application.build", types.SimpleNamespace(deploy=deploy))
    monkeypatch.setattr(serve_cli, "_load_config", lambda opts, progress: types.SimpleNamespace(
        server=types.SimpleNamespace(demo=False)))
    monkeypatch.setattr(serve_cli, "_start_ray", lambda cfg, address: calls.append("ray.init"))
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "fleetserve serve: deploy failed: RuntimeError: replica died: out of memory" in err
    assert "Traceback" not in err
    assert calls == ["ray.init", "serve.shutdown", "ray.shutdown"]


def test_a_bad_config_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("models: [{name: m, checkpoint: /nope, no_such_field: 1}]\n")
    assert main(["serve", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetserve serve: ") and "no_such_field" in err and "Traceback" not in err


def test_shell_completion_completes_commands_and_flags(monkeypatch, capsys):
    monkeypatch.setenv("_FLEETSERVE_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "fleetserve ten")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert main([]) == 0
    assert capsys.readouterr().out.split() == ["tenants"]
    monkeypatch.setenv("COMP_WORDS", "fleetserve tenants set-quota acme --max-c")
    monkeypatch.setenv("COMP_CWORD", "4")
    assert main([]) == 0
    assert capsys.readouterr().out.split() == ["--max-concurrent", "--max-context"]
