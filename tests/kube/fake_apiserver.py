"""A local HTTP server that speaks the parts of the Kubernetes API the spot watcher uses:
``GET /api/v1/nodes`` (list, and ``?watch=true`` as newline-delimited JSON events on a
connection the server closes at the end of the script), ``GET /api/v1/namespaces/NS/pods``
with a ``spec.nodeName`` field selector, and a recorder for fleetserve's
``POST /admin/nodes/{node}/drain``."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlparse


@dataclass
class ApiScript:
    nodes: list[dict]
    list_resource_version: str
    watch_events: list[dict]  # sent in order, then the stream ends
    pods_by_node: dict[str, list[dict]] = field(default_factory=dict)
    drain_status: int = 202
    requests: list[tuple[str, str, dict, Optional[dict]]] = field(default_factory=list)  # method, path, query, body


class FakeApiServer:
    def __init__(self, script: ApiScript):
        self.script = script
        handler = type("Handler", (_Handler,), {"script": script})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeApiServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    script: ApiScript
    protocol_version = "HTTP/1.0"  # the connection closing ends a watch stream

    def log_message(self, *args) -> None:
        pass

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.script.requests.append(("GET", url.path, query, None))
        if url.path == "/api/v1/nodes" and query.get("watch") in ("true", "True", "1"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            for event in self.script.watch_events:
                self.wfile.write((json.dumps(event) + "\n").encode())
                self.wfile.flush()
            return
        if url.path == "/api/v1/nodes":
            self._send_json(200, {"kind": "NodeList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": self.script.list_resource_version},
                                  "items": self.script.nodes})
            return
        if url.path.startswith("/api/v1/namespaces/") and url.path.endswith("/pods"):
            node = query.get("fieldSelector", "").removeprefix("spec.nodeName=")
            self._send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                  "items": self.script.pods_by_node.get(node, [])})
            return
        self._send_json(404, {"kind": "Status", "code": 404})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.script.requests.append(("POST", url.path, {"authorization": self.headers.get("Authorization")}, body))
        self._send_json(self.script.drain_status, {"accepted": self.script.drain_status < 300})
