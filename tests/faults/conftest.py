"""The fault-injection suite's app: its own Serve application (under /faults on the session's
proxy) with tenants in its own redis-server (fail_closed), the admin API on its own port, a
short stall timeout for streams, and per-step streaming. Shared by every fault test; each
test first waits until the app serves again."""

from __future__ import annotations

import pytest

from tests.faults.harness import APP, PREFIX, FaultApp, fault_config
from tests.fixtures.ray_serve import free_port, wait_for
from tests.fixtures.redis_server import running_redis


@pytest.fixture(scope="session")
def fault_redis():
    with running_redis() as server:  # its own server: the tests kill and restart it
        yield server


@pytest.fixture(scope="session")
def fault_app(serve_app, fault_redis):
    from ray import serve

    from fleetserve.application.build import deploy

    admin_port = free_port()
    cfg = fault_config(serve_app.checkpoint, serve_app.config.server.port, admin_port, fault_redis.url)
    deploy(cfg, start=False)
    app = FaultApp(serve_app.base_url + PREFIX, f"http://127.0.0.1:{admin_port}", serve_app.model, fault_redis)
    wait_for(app.serves, 180, "the fault app to answer a completion")
    yield app
    serve.delete(APP)


@pytest.fixture
def healthy(fault_app) -> FaultApp:
    """The fault app once it serves again (after the previous test's fault)."""
    if not fault_app.redis.proc or fault_app.redis.proc.poll() is not None:
        fault_app.redis.start()
    wait_for(fault_app.serves, 180, "the fault app to serve again")
    return fault_app
