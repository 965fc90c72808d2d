"""The private metrics listener: auth, port range, loopback-only when open."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from fleetserve.errors import ConfigError
from fleetserve.metrics.server import MetricsServer
from fleetserve.credentials import hash_api_key

TOKEN = "scrape-token-0123456789abcdef"


def registry_with_sample() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("fleetserve_demo", "demo", ["tenant"], registry=reg).labels("acme").inc()
    return reg


@pytest.fixture
def server():
    srv = MetricsServer(registry_with_sample(), "127.0.0.1", 0, accepted_hashes=[hash_api_key(TOKEN)])
    yield srv
    srv.close()


def test_a_token_scrapes_and_anything_else_is_401(server):
    url = f"http://{server.address}/metrics"
    ok = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert ok.status_code == 200 and 'fleetserve_demo_total{tenant="acme"} 1.0' in ok.text
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
        denied = httpx.get(url, headers=headers, timeout=10)
        assert denied.status_code == 401 and "acme" not in denied.text
        assert denied.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"http://{server.address}/other", timeout=10).status_code == 404


def test_open_only_on_loopback():
    srv = MetricsServer(registry_with_sample(), "127.0.0.1", 0)
    try:
        assert httpx.get(f"http://{srv.address}/metrics", timeout=10).status_code == 200
    finally:
        srv.close()
    with pytest.raises(ConfigError) as exc:
        MetricsServer(registry_with_sample(), "0.0.0.0", 0)
    assert exc.value.field == "metrics.host"


def test_takes_the_next_free_port_of_its_range():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        base = held.getsockname()[1]
        try:
            srv = MetricsServer(registry_with_sample(), "127.0.0.1", base, port_range=8)
        except ConfigError:
            pytest.skip("the ports after the held one are taken by other processes")
        try:
            assert base < srv.port < base + 8
        finally:
            srv.close()
        with pytest.raises(ConfigError):
            MetricsServer(registry_with_sample(), "127.0.0.1", base, port_range=1)


def test_before_scrape_runs_on_every_scrape():
    calls = []
    srv = MetricsServer(registry_with_sample(), "127.0.0.1", 0, before_scrape=lambda: calls.append(1))
    try:
        for _ in range(2):
            httpx.get(f"http://{srv.address}/metrics", timeout=10)
        assert len(calls) == 2
    finally:
        srv.close()


def test_extra_pages_need_the_same_token_and_a_failing_one_answers_500():
    pages = {"/metrics/scaling": lambda: b"fleetserve_warm_replicas 1.0\n", "/metrics/broken": lambda: 1 / 0}
    srv = MetricsServer(registry_with_sample(), "127.0.0.1", 0, accepted_hashes=[hash_api_key(TOKEN)], extra_paths=pages)
    try:
        url = f"http://{srv.address}/metrics/scaling"
        assert httpx.get(url, timeout=10).status_code == 401
        ok = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert ok.status_code == 200 and ok.text == "fleetserve_warm_replicas 1.0\n"
        broken = httpx.get(f"http://{srv.address}/metrics/broken", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert broken.status_code == 500
        assert httpx.get(f"http://{srv.address}/metrics/other", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=10).status_code == 404
    finally:
        srv.close()
