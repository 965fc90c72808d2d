"""Where the ingress replicas serve HTTP themselves (Ray Serve direct ingress).

With ``server.serve_throughput_optimized`` (the default), Serve starts an HTTP server inside
every ingress replica, next to its HTTP proxy. A client or load balancer that reaches that
port skips the proxy hop: no proxy process parsing HTTP, no Ray call carrying the ASGI
messages, no Ray object per streamed chunk between proxy and ingress. On two cores that hop
costs about as much CPU per request as the rest of the request path (bench_overload.py
``--target``), so tenants that care about latency, or a load balancer in front of the
fleet, should target these ports. Serve assigns each replica the lowest free port from
``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT`` (30000 by default); the server binds
``server.host``.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def direct_http_urls(app_name: str, host: str) -> list[str]:
    """Base URLs (``http://host:port``) of the ingress replicas of ``app_name`` serving HTTP
    themselves; empty when direct ingress is off or not ready. Needs a connected Ray driver."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    try:
        # from_proxy_manager: in HAProxy mode the controller otherwise answers with haproxy's
        # own targets; this asks for what haproxy itself forwards to (the replicas).
        groups = ray.get(
            _get_global_client()._controller.get_target_groups.remote(app_name, from_proxy_manager=True), timeout=10
        )
    except Exception as exc:  # noqa: BLE001 - an older Serve or no controller: no direct ingress to report
        log.debug("no direct ingress targets for %s: %s", app_name, exc)
        return []
    urls = []
    for g in groups:
        if g.protocol != RequestProtocol.HTTP or g.app_name != app_name:
            continue
        for t in g.targets:
            if t.name.startswith("SERVE_REPLICA::"):  # proxies are targets too; replicas only
                urls.append(f"http://{host}:{t.port}")
    return sorted(urls)
