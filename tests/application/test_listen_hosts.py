"""No listener of fleetserve's binds to all interfaces with the default config (issue 25, item 7).

Real Ray Serve on loopback (the session's ``serve_app``: default server and metrics settings but
free ports). The listening sockets of the whole Ray process tree (raylet, GCS, workers, haproxy,
all children of this test process) are read with psutil; fleetserve's are told apart by their
ports, found from the config, /admin/status, the replica's stats (its link), Serve's
direct-ingress targets and the haproxy environment.

Four listeners that serve fleetserve's traffic are opened by Ray Serve 2.60 on all interfaces
whatever host it is given (hard-coded: ``[::]`` in ``serve/_private/grpc_util.py``, ``*`` in the
haproxy template). They are named here and in docs/operations.md with their mitigation, so a
new one, or one of fleetserve's own going wide, fails this test. Ray's core ports (GCS, raylet,
workers, agents) are listed in docs/operations.md, not asserted on.
"""

from __future__ import annotations

import os

import httpx
import psutil
import pytest

pytestmark = pytest.mark.ray

WILDCARD = ("0.0.0.0", "::")
SERVE_HARDCODED_WIDE = {"haproxy stats", "haproxy metrics", "Serve gRPC fallback proxy", "direct ingress gRPC"}


def tree_listeners() -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP listener of this process and its descendants."""
    out = []
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="tcp")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out += [(c.laddr.ip, c.laddr.port, name) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def fleetserve_ports(serve_app, listening) -> dict[int, str]:
    from fleetserve.deployments.direct_ingress import direct_http_urls
    from tests.fixtures.metrics_scrape import listeners

    cfg = serve_app.config
    ports = {cfg.server.port: "REST", cfg.server.grpc_port: "gRPC"}
    status = httpx.get(serve_app.base_url + "/admin/status", timeout=30,
                       headers={"Authorization": f"Bearer {serve_app.admin_key}"}).json()
    ports.update({int(r["link_address"].rsplit(":", 1)[1]): "replica link"
                  for m in status["models"] for r in m["replicas"] if r["link_address"]})
    found = listeners(serve_app.base_url, serve_app.admin_key)
    ports[int(found.ingress.rsplit(":", 1)[1])] = "ingress metrics"
    ports.update({int(r.rsplit(":", 1)[1]): "replica metrics" for r in found.replicas})
    ports.update({int(u.rsplit(":", 1)[1]): "direct ingress" for u in direct_http_urls(cfg.server.app_name, "127.0.0.1")})
    for env, what in (("RAY_SERVE_HAPROXY_STATS_PORT", "haproxy stats"), ("RAY_SERVE_HAPROXY_METRICS_PORT", "haproxy metrics")):
        if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and os.environ.get(env):
            ports[int(os.environ[env])] = what
    haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    if haproxy and cfg.server.grpc_port is not None:
        ports[int(os.environ.get("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", "9500"))] = "Serve gRPC fallback proxy"
    ports.update({p: "direct ingress gRPC" for _, p, name in listening
                  if name.endswith(":ingress") and 40000 <= p < 41000})  # Serve's RAY_SERVE_DIRECT_INGRESS_*_GRPC_PORT
    return ports


def test_no_fleetserve_listener_on_all_interfaces(serve_app):
    listening = tree_listeners()
    ours = fleetserve_ports(serve_app, listening)
    bound = {p for _, p, _ in listening}
    assert not [what for p, what in ours.items() if p not in bound], "a fleetserve port is not listening"
    assert {"REST", "gRPC", "ingress metrics", "replica metrics", "replica link"} <= set(ours.values())
    wide = {ours[p] for a, p, _ in listening if p in ours and a in WILDCARD}
    assert wide <= SERVE_HARDCODED_WIDE, f"fleetserve listeners on all interfaces: {sorted(wide - SERVE_HARDCODED_WIDE)}"
