"""How a stopping replica treats its in-flight requests: migrate them, or let them finish.

``drain_mode: migrate`` hands requests back to the ingress to be resumed on another replica.
When the replica stops because the whole application is going away (``serve.delete``,
``serve.shutdown``, Ctrl-C on ``fleetserve serve``) or no other replica of its model version
is running (its own deployment and the spot twin, :func:`sibling_deployments`), there is
nowhere to resume them: migrating would end every stream with a 503. Then it finishes them
within ``drain_timeout_s`` instead. :func:`shutdown_mode` is the pure decision;
:func:`serve_view` reads what it needs from Serve's controller.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

TWIN_SUFFIX = "--spot"  # application/build.twin_deployment_name
STATUS_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class PeerView:
    """What Serve says while this replica stops. ``app_deleting``: the application is being
    deleted (or Serve's controller did not answer: it is shutting down). ``running_peers``:
    RUNNING replicas of this model version other than this one (it is STOPPING already)."""

    app_deleting: bool
    running_peers: int


def shutdown_mode(configured: str, view: Optional[PeerView]) -> str:
    """``migrate`` only where a continuation can land; ``finish`` otherwise (None: unknown)."""
    if configured != "migrate":
        return configured
    if view is None or view.app_deleting or view.running_peers == 0:
        return "finish"
    return "migrate"


def sibling_deployments(deployment: str) -> tuple[str, str]:
    """The deployments serving one model version: the on-demand one and its spot twin."""
    base = deployment.removesuffix(TWIN_SUFFIX)
    return base, base + TWIN_SUFFIX


def peer_view_from_status(status, app_name: str, deployment: str) -> PeerView:
    """From ``serve.status()``: the application's state and its siblings' RUNNING replicas."""
    app = status.applications.get(app_name)
    if app is None:
        return PeerView(app_deleting=True, running_peers=0)
    deleting = str(getattr(app.status, "value", app.status)) == "DELETING"
    running = 0
    for name in sibling_deployments(deployment):
        d = app.deployments.get(name)
        if d is not None:
            running += sum(n for state, n in d.replica_states.items()
                           if str(getattr(state, "value", state)) == "RUNNING")
    return PeerView(app_deleting=deleting, running_peers=running)


async def serve_view() -> Optional[PeerView]:
    """This replica's :class:`PeerView` from Serve's controller; None outside Serve or when the
    controller does not answer in time (it is shutting down)."""
    try:
        from ray import serve

        ctx = serve.get_replica_context()
        status = await asyncio.wait_for(asyncio.to_thread(serve.status), STATUS_TIMEOUT_S)
        return peer_view_from_status(status, ctx.app_name, ctx.deployment)
    except Exception as exc:  # noqa: BLE001 - no answer: treat as the whole app going away
        log.info("no view of the other replicas while stopping (%r): finishing in-flight requests here", exc)
        return None
