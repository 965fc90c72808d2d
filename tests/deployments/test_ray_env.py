"""The Serve tuning flags fleetserve sets before Ray starts."""

import os

import pytest

from fleetserve.config import ServerConfig
from fleetserve.deployments.ray_env import (
    HAPROXY_FLAG,
    apply_serve_env,
    haproxy_binary,
    haproxy_private_env,
    resolve_proxy,
    serve_env,
)
from fleetserve.errors import ConfigError


DEFAULT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_worker_niceness": "0", "FLEETSERVE_GC_GEN2_THRESHOLD": "1000",
               "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(4 << 20)}


def test_defaults_and_operator_value_wins():
    assert serve_env(ServerConfig(), proxy="python") == DEFAULT_ENV
    assert serve_env(ServerConfig(serve_throughput_optimized=False, ray_worker_niceness=None, gc_gen2_threshold=None),
                     proxy="python") == {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(4 << 20)}  # never Ray's 2 GiB
    assert serve_env(ServerConfig(grpc_max_message_bytes=65536), proxy="python")["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == "65536"
    assert serve_env(ServerConfig(ray_worker_niceness=5), proxy="python")["RAY_worker_niceness"] == "5"
    env: dict[str, str] = {}
    assert apply_serve_env(ServerConfig(proxy="python"), env) == DEFAULT_ENV and env == DEFAULT_ENV
    explicit = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_worker_niceness": "15", "FLEETSERVE_GC_GEN2_THRESHOLD": "10",
                "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": "1048576"}
    assert apply_serve_env(ServerConfig(proxy="python"), explicit) == {} and explicit["RAY_worker_niceness"] == "15"


def test_proxy_choice():
    found, missing = (lambda: "/usr/sbin/haproxy"), (lambda: None)
    assert resolve_proxy(ServerConfig(), found) == "haproxy"
    assert resolve_proxy(ServerConfig(), missing) == "python"
    assert resolve_proxy(ServerConfig(proxy="python"), found) == "python"
    assert resolve_proxy(ServerConfig(proxy="haproxy"), found) == "haproxy"
    with pytest.raises(ConfigError, match="no haproxy executable") as err:
        resolve_proxy(ServerConfig(proxy="haproxy"), missing)
    assert err.value.field == "server.proxy"
    assert serve_env(ServerConfig(), proxy="haproxy") == DEFAULT_ENV | {HAPROXY_FLAG: "1"}


def test_haproxy_gets_private_paths_and_ports(tmp_path):
    exe = tmp_path / "haproxy"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    env = {"RAY_SERVE_HAPROXY_BINARY_PATH": str(exe)}
    applied = apply_serve_env(ServerConfig(), env)
    assert applied[HAPROXY_FLAG] == "1"
    state = applied["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    assert os.stat(state).st_mode & 0o077 == 0  # the admin socket Serve makes mode 666 lives here
    for key in ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        assert os.path.dirname(applied[key]) == state
    ports = {int(applied["RAY_SERVE_HAPROXY_STATS_PORT"]), int(applied["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert len(ports) == 2 and not ports & {8404, 9101}
    # An operator's own value wins; a missing explicit binary is not silently replaced by PATH.
    env = {"RAY_SERVE_HAPROXY_BINARY_PATH": str(exe), "RAY_SERVE_HAPROXY_STATS_PORT": "8500"}
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in apply_serve_env(ServerConfig(), env) and env["RAY_SERVE_HAPROXY_STATS_PORT"] == "8500"
    assert haproxy_binary({"RAY_SERVE_HAPROXY_BINARY_PATH": str(tmp_path / "nope")}) is None
    # Every haproxy path and port set by the operator: nothing private is made.
    env = {"RAY_SERVE_HAPROXY_BINARY_PATH": str(exe)} | {k: "x" for k in haproxy_private_env("", 0, 0)}
    assert set(apply_serve_env(ServerConfig(), env)) == set(DEFAULT_ENV) | {HAPROXY_FLAG}


def test_rest_port_is_served_by_haproxy_when_installed(serve_app):
    # The session cluster runs the default proxy choice: with a haproxy binary (ray[serve]
    # bundles one on Linux), the REST port must be haproxy's, with this cluster's private config.
    if haproxy_binary() is None:
        assert os.environ.get(HAPROXY_FLAG) != "1"
        return
    assert os.environ.get(HAPROXY_FLAG) == "1"
    cfg = os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    cmdlines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdlines.append(f.read().split(b"\0"))
        except OSError:
            continue
    # Serve writes the config into a directory of its own under the one we chose.
    state = os.path.dirname(cfg)
    ours = [c for c in cmdlines if c and os.path.basename(c[0]) == b"haproxy" and len(c) > 3 and c[2] == b"-f"
            and os.path.dirname(os.path.dirname(c[3])) == os.fsencode(state)]
    assert ours, f"no haproxy process runs a config under {state}"
    with open(ours[0][3]) as f:
        assert f":{serve_app.config.server.port}" in f.read()


def test_serving_workers_run_at_the_configured_niceness(serve_app):
    # The session's cluster was started with apply_serve_env's environment: the replica
    # hosting the engine (a Ray worker) must not run at Ray's default niceness of 15, but at
    # the niceness the cluster was started with (this test process's: `nice pytest` raises both).
    import os

    import ray

    @ray.remote(num_cpus=0)
    def worker_niceness() -> int:
        return os.nice(0)

    assert ray.get(worker_niceness.remote(), timeout=60) == os.nice(0)
