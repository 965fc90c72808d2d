"""A process's private metrics listener: ``GET /metrics`` of one Prometheus registry.

Each fleetserve process that holds series (the ingress, every model replica) runs one,
on the configured internal host, apart from the tenant-facing REST port. A threaded
standard-library HTTP server keeps scrapes off the serving event loop. A process may serve
more text-format pages beside ``/metrics`` (``extra_paths``: the ingress serves the scaling
controller's series at ``/metrics/scaling``), under the same auth.

Auth: when ``accepted_hashes`` is non-empty a scrape must carry ``Authorization: Bearer
<token>`` whose ``sha256:<hex>`` is one of them (401 otherwise); an empty set is allowed
only on a loopback host, so a listener reachable from elsewhere is never open.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Mapping, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from fleetserve.credentials import key_matches_any
from fleetserve.errors import ConfigError
from fleetserve.exposure import is_loopback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenerSettings:
    """Where a process's metrics listener binds and whom it lets in (built from the config
    by the application, handed to the ingress and to every model replica)."""

    host: str = "127.0.0.1"
    port: int = 0
    port_range: int = 1
    accepted_hashes: tuple[str, ...] = ()


class MetricsServer:
    """Serves ``registry`` at ``http://host:port/metrics`` from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, *, port_range: int = 1,
                 accepted_hashes: Iterable[str] = (), before_scrape: Optional[Callable[[], None]] = None,
                 extra_paths: Optional[Mapping[str, Callable[[], bytes]]] = None) -> None:
        self._registry = registry
        self._extra = dict(extra_paths or {})
        self._hashes = tuple(h for h in accepted_hashes if h)
        if not self._hashes and not is_loopback(host):
            raise ConfigError(f"metrics.host {host!r} is not loopback: set metrics.scrape_token_hash or an admin key "
                              "so scrapes are authenticated", field="metrics.host")
        self._before = before_scrape
        self._httpd = _bind(host, port, port_range, self._handler_class())
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fleetserve-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s/metrics (%s)", self.address, "token required" if self._hashes else "loopback, open")

    @classmethod
    def start(cls, registry: CollectorRegistry, settings: ListenerSettings,
              before_scrape: Optional[Callable[[], None]] = None,
              extra_paths: Optional[Mapping[str, Callable[[], bytes]]] = None) -> "MetricsServer":
        """``extra_paths``: path -> renderer of a Prometheus text page (called from a listener
        thread, so it may block; an exception answers 500 and is logged)."""
        return cls(registry, settings.host, settings.port, port_range=settings.port_range,
                   accepted_hashes=settings.accepted_hashes, before_scrape=before_scrape, extra_paths=extra_paths)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def authorized(self, authorization: Optional[str]) -> bool:
        if not self._hashes:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return key_matches_any(token.strip(), self._hashes)

    def serves(self, path: str) -> bool:
        return path == "/metrics" or path in self._extra

    def render(self, path: str = "/metrics") -> bytes:
        if path in self._extra:
            return self._extra[path]()
        if self._before is not None:
            self._before()
        return generate_latest(self._registry)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if not server.serves(path):
                    return self._reply(404, b"not found\n", "text/plain")
                if not server.authorized(self.headers.get("Authorization")):
                    return self._reply(401, b"unauthorized\n", "text/plain", {"WWW-Authenticate": "Bearer"})
                try:
                    body = server.render(path)
                except Exception:  # a broken collector must not kill the listener
                    log.exception("rendering metrics failed")
                    return self._reply(500, b"metrics unavailable\n", "text/plain")
                self._reply(200, body, CONTENT_TYPE_LATEST)

            def _reply(self, status: int, body: bytes, ctype: str, headers: Optional[dict] = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # scrapes every 15 s: not worth a log line
                pass

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # two processes of a node must not share a port


class _Server6(_Server):
    address_family = socket.AF_INET6


def _bind(host: str, port: int, port_range: int, handler: type) -> _Server:
    """The first free port of ``[port, port + port_range)`` (``port`` 0: any free one)."""
    ports = [0] if port == 0 else range(port, min(port + port_range, 65536))
    last: Optional[OSError] = None
    for p in ports:
        try:
            return (_Server6 if ":" in host else _Server)((host, p), handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            last = exc
    raise ConfigError(f"no free metrics port in [{port}, {port + port_range}) on {host}: {last}", field="metrics.port")
