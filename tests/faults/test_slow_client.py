"""A client that opens a stream and never reads it: the ingress's write blocks on TCP flow
control, and after ``server.stream_send_timeout_s`` the request is cancelled like a
disconnect (aborted in the engine, KV blocks freed, metered as aborted, its tenant's
concurrency slot released), with no memory growth in the ingress meanwhile."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.faults.harness import APP, SLOT_KEY, STALL_TIMEOUT_S, replica_process
from tests.fixtures.ray_serve import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.redis]


def direct_url(app) -> str:
    """The ingress replica's own HTTP port when Serve runs one (no proxy buffering between), else the proxy."""
    from fleetserve.deployments.direct_ingress import direct_http_urls

    urls = direct_http_urls(APP, "127.0.0.1")
    return urls[0] if urls else app.base_url.removesuffix("/faults")


def stalled_stream(url: str, model: str) -> socket.socket:
    """Send a long streamed completion on a socket with a tiny window, read only the headers, then never read."""
    parts = urlsplit(url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)  # a small MSS keeps the server's send buffer small
    s.connect((parts.hostname, parts.port))
    body = json.dumps({"model": model, "prompt": "def main(", "max_tokens": 1900, "temperature": 0, "stream": True,
                       "ignore_eos": True, "logprobs": 5}).encode()
    s.sendall(f"POST /faults/v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SLOT_KEY}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    head = s.recv(1024)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return s


def test_a_client_that_never_reads_is_cancelled_and_its_kv_freed(healthy):
    app = healthy
    ingress = replica_process(APP, "ingress")
    aborted = app.metric("fleetserve_tenant_requests_total", tenant="oneslot", outcome="aborted")
    rss_before = ingress.memory_info().rss
    sock = stalled_stream(direct_url(app), app.model)
    try:
        # The one-slot tenant's slot is taken by the stalled stream until the timeout cancels it.
        wait_for(lambda: app.metric("fleetserve_tenant_requests_total", tenant="oneslot", outcome="aborted") > aborted,
                 STALL_TIMEOUT_S + 60, "the stalled stream to be cancelled (metered as aborted)")
        wait_for(lambda: all(r["kv_usage"] == 0 and r["running"] == 0 for r in app.replica_rows()), 30,
                 "the stalled request's KV blocks to be freed")
        assert app.complete(key=SLOT_KEY, max_tokens=1).status_code == 200  # its concurrency slot is free again
        growth = ingress.memory_info().rss - rss_before
        assert growth < 64 << 20, f"the ingress grew by {growth >> 20} MiB holding one stalled stream"
    finally:
        sock.close()  # only now does the client go away
