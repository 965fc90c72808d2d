"""Warm-pool standby on a replica: park (leave routing, then sleep the engine) and wake.

A parked replica keeps its weights loaded and releases its KV cache (the native engine frees
its KV blocks tensor; vLLM uses its sleep mode when ``engine_args.enable_sleep_mode`` is set).
An engine that cannot sleep (``capabilities().supports_sleep`` false, e.g. vLLM without sleep
mode on this platform) is parked awake: out of routing, KV kept, activation then only flips
the routing flag.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Optional

from fleetserve.engine.protocol import EngineProtocol

SPOT_RESOURCE = "spot"  # custom resource (or label key) a spot Ray node advertises
EMPTY_POLL_S = 0.05


async def park(engine: EngineProtocol, in_flight: Callable[[], int], timeout_s: float) -> bool:
    """Wait (up to ``timeout_s``) for the requests in flight to finish, then sleep the engine.
    True when it sleeps; False when it cannot (still busy, or no sleep support)."""
    deadline = time.monotonic() + timeout_s
    while in_flight() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(EMPTY_POLL_S)
    if in_flight() > 0 or not engine.capabilities().supports_sleep:
        return False
    await engine.sleep()
    return True


async def wake(engine: EngineProtocol) -> None:
    if engine.capabilities().supports_sleep and engine.stats().sleeping:
        await engine.wake_up()


def node_capacity_type(labels: Optional[dict] = None, resources: Optional[dict] = None) -> Optional[str]:
    """``spot`` when this Ray node carries the spot label or resource, ``on_demand`` on any
    other Ray node, None outside Ray (tests)."""
    if labels is None and resources is None:
        try:
            import ray

            if not ray.is_initialized():
                return None
            ctx = ray.get_runtime_context()
            labels = ctx.get_node_labels() or {}
            node = ctx.get_node_id()
            resources = next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == node), {})
        except Exception:  # noqa: BLE001 - no Ray here
            return None
    labels, resources = labels or {}, resources or {}
    spot = labels.get("fleetserve/capacity") == "spot" or resources.get(SPOT_RESOURCE, 0) > 0
    return "spot" if spot else "on_demand"
