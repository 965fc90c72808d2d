"""Environment the Ray processes of a fleetserve cluster need, set before Ray starts.

Ray Serve reads its tuning flags from environment variables when its modules are imported,
in every Ray process (controller, proxies, replicas). A cluster started by ``ray.init`` on
this machine inherits the driver's environment, so setting them here before ``ray.init`` is
enough; an existing cluster must have them in its own environment.
"""

from __future__ import annotations

import os
from typing import Mapping, MutableMapping, Optional

from fleetserve.config import ServerConfig


def serve_env(server: ServerConfig) -> dict[str, str]:
    """The variables ``server`` asks for (empty when nothing differs from Ray's defaults)."""
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} if server.serve_throughput_optimized else {}
    if server.ray_worker_niceness is not None:
        env["RAY_worker_niceness"] = str(server.ray_worker_niceness)
    return env


def apply_serve_env(server: ServerConfig, environ: Optional[MutableMapping[str, str]] = None) -> Mapping[str, str]:
    """Set :func:`serve_env` in ``environ`` (default ``os.environ``) where not already set; an
    operator's explicit value wins. Returns what was set."""
    env = os.environ if environ is None else environ
    applied = {k: v for k, v in serve_env(server).items() if k not in env}
    env.update(applied)
    return applied
