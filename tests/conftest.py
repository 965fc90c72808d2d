"""Shared fixtures live in tests/fixtures/*.py and are loaded as pytest plugins."""

import os

# Serve holds every stopping ingress replica open for at least this long in direct-ingress
# mode (Ray's default 30 s), so that an external load balancer can deregister it first. The
# test clusters' only balancer is Serve's own haproxy, which the controller updates and which
# retries a refused connection on another replica; in-flight requests are still drained.
# With the default every app teardown (and the session's) waited 30 s per ingress replica.
# Set before any Ray process starts; an explicit value in the environment wins.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")

pytest_plugins = [
    "tests.fixtures.checkpoints",  # tiny HF checkpoints made on disk (engine)
    "tests.fixtures.adapters",  # tiny PEFT LoRA adapters for them (engine/lora)
    "tests.fixtures.redis_server",  # real redis-server on a free loopback port (tenants)
    "tests.fixtures.ray_serve",  # one shared Ray session + Serve apps (serving)
]
