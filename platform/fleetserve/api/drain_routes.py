"""Admin drain endpoints: stop a replica, or every replica on a node, from taking new requests.

- ``POST /admin/replicas/{replica_id}/drain`` and ``.../resume``;
- ``POST /admin/nodes/{node}/drain``: ``node`` is a Ray node id, a node IP, or a Kubernetes
  node name whose Ray pods the body lists (``{"pods": [{"name", "ip"}], "reason",
  "deadline_s", "signals", "source"}``, what ``fleetserve watch-nodes`` sends).

A draining replica reports ``draining`` in its stats, so the router sends it nothing new (a
stream it refuses before its first token goes through Serve's router to another replica).
Its requests in flight are handed back and resumed on other replicas at once (drain mode
``migrate``, the model's ``drain_mode`` by default; ``?mode=`` or the node body's ``mode``
overrides it per call), or finish there (``finish``). The answer counts both per replica
(``in_flight``, ``migrated``).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fleetserve.api.json_body import parse_model, parse_object, read_body
from fleetserve.deployments.replica_control import ReplicaControl
from fleetserve.deployments.replica_stats import ReplicaStatus
from fleetserve.errors import NotFoundError

MAX_DRAIN_BODY_BYTES = 64 * 1024
DrainMode = Literal["migrate", "finish"]


class PodRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field("", max_length=253, description="Kubernetes pod name.")
    ip: Optional[str] = Field(None, max_length=64, description="The pod's IP: its Ray node IP.")


class NodeDrainBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    source: str = Field("admin", max_length=64, description="Who asks (kubernetes, admin, ...).")
    reason: str = Field("", max_length=256, description="Why, for the logs.")
    signals: list[str] = Field(default_factory=list, max_length=32, description="Termination signals seen.")
    deadline_s: Optional[float] = Field(None, ge=0, description="Seconds until the node goes away, when known.")
    pods: list[PodRef] = Field(default_factory=list, max_length=256, description="Ray pods on the node.")
    mode: Optional[DrainMode] = Field(None, description="migrate: hand in-flight requests back to be resumed "
                                      "elsewhere now; finish: let them finish; null: each model's drain_mode.")


def replicas_on_node(rows: Sequence[ReplicaStatus], node: str, pod_ips: Sequence[str]) -> list[ReplicaStatus]:
    """Replicas whose Ray node is ``node`` (id or IP) or whose node IP is one of ``pod_ips``."""
    ips = {ip for ip in pod_ips if ip}
    return [r for r in rows if node in (r.node_id, r.node_ip) or (r.node_ip is not None and r.node_ip in ips)]


def build_drain_router(service, control: ReplicaControl) -> APIRouter:
    """``service``: the ingress's InferenceService (admin auth and replica rows)."""
    router = APIRouter()

    async def admin(request: Request) -> None:
        from fleetserve.api.rest import bearer_key

        await service.gatekeeper.authenticate_admin(bearer_key(request.headers.get("authorization")))

    def find(replica_id: str) -> ReplicaStatus:
        for r in service.replica_status():
            if r.replica == replica_id:
                return r
        raise NotFoundError(f"no replica `{replica_id}`", field="replica_id")

    async def set_draining(row: ReplicaStatus, draining: bool, mode: Optional[str] = None) -> dict:
        ack = await control.set_draining(row.target or row.model, row.replica, draining, mode)
        return {"replica": row.replica, "model": row.model, "applied": ack.applied, "draining": ack.draining,
                "in_flight": ack.in_flight, "migrated": ack.migrated}

    @router.post("/admin/replicas/{replica_id}/drain", summary="Stop a replica taking new requests (admin key).")
    async def drain_replica(replica_id: str, request: Request, mode: Optional[DrainMode] = None):
        await admin(request)
        return JSONResponse(await set_draining(find(replica_id), True, mode), status_code=202)

    @router.post("/admin/replicas/{replica_id}/resume", summary="Let a drained replica take requests again (admin key).")
    async def resume_replica(replica_id: str, request: Request):
        await admin(request)
        return await set_draining(find(replica_id), False)

    @router.post("/admin/nodes/{node}/drain", summary="Drain every replica on a node (admin key).")
    async def drain_node(node: str, request: Request):
        await admin(request)
        body = await _node_body(request)
        rows = replicas_on_node(service.replica_status(), node, [p.ip for p in body.pods if p.ip])
        results = [await set_draining(r, True, body.mode) for r in rows]
        return JSONResponse({"node": node, "reason": body.reason, "replicas": results}, status_code=202)

    return router


async def _node_body(request: Request) -> NodeDrainBody:
    """The optional body: empty is an empty request; anything else goes through the edge's
    bounded reader (size, depth, valid text, schema: 400/413 naming the field)."""
    body = await read_body(request, MAX_DRAIN_BODY_BYTES)
    if not body.strip():
        return NodeDrainBody()
    return parse_model(NodeDrainBody, parse_object(body))
