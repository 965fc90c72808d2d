"""Admin scaling endpoints (admin key, checked before any body is read):

- ``GET  /admin/scaling``: per model version, what the scaling controller last decided and
  why (inputs, notes), its serving/standby/draining replicas and operator overrides;
- ``POST /admin/scaling/{model}``: ``{"version", "min_replicas", "max_replicas", "warm"}``
  overrides the profile's bounds and warm-pool size (``fleetserve scale``);
- ``GET  /admin/replicas``: one row per replica: state (serving, standby, draining,
  unhealthy), version, node, spot/on-demand, load (``fleetserve replicas``).

Drains use the drain routes (``api/drain_routes.py``). The controller's Prometheus series are
not served here: the ingress's private metrics listener serves them at ``/metrics/scaling``
(``metrics/server.py``, same credentials as its ``/metrics``).
"""

from __future__ import annotations

from typing import Optional, Protocol

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetserve.api.json_body import parse_model, parse_object, read_body
from fleetserve.deployments.replica_stats import ReplicaStatus
from fleetserve.errors import ModelNotFoundError

MAX_SCALE_BODY_BYTES = 16 * 1024


class ScalingControl(Protocol):
    """The scaling controller as the ingress reaches it (an actor client, or in-process)."""

    async def status(self) -> dict: ...

    async def set_override(self, model: str, version: str, min_replicas: Optional[int], max_replicas: Optional[int],
                           warm: Optional[int]) -> dict: ...

    async def metrics_text(self) -> bytes:
        """Its series (``fleetserve_warm_replicas``, ...) in the Prometheus text format."""
        ...


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Optional[str] = Field(None, max_length=128, description="Model version; default: the stable one.")
    min_replicas: Optional[int] = Field(None, ge=0, le=10_000, description="Fewest serving replicas.")
    max_replicas: Optional[int] = Field(None, ge=1, le=10_000, description="Most serving replicas.")
    warm: Optional[int] = Field(None, ge=0, le=10_000, description="Warm standbys to keep (fixed pool size).")

    @model_validator(mode="after")
    def _bounds(self) -> "ScaleBody":
        if self.min_replicas is not None and self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


def replica_state(row: ReplicaStatus) -> str:
    if not row.healthy:
        return "unhealthy"
    if row.standby:
        return "standby"
    return "draining" if row.draining else "serving"


def model_version(route: str, versions: dict[str, str]) -> tuple[str, str]:
    """A route name -> (model, version): ``model@version`` for a runtime version, else the
    model with its configured version (``versions``)."""
    model, sep, version = route.rpartition("@")
    return (model, version) if sep and model in versions else (route, versions.get(route, ""))


def replica_rows(rows: list[ReplicaStatus], versions: dict[str, str]) -> list[dict]:
    return [{"replica": r.replica, **dict(zip(("model", "version"), model_version(r.model, versions))),
             "state": replica_state(r),
             "node_id": r.node_id, "node_ip": r.node_ip, "capacity_type": r.capacity_type,
             "running": r.num_running, "waiting": r.num_waiting, "in_flight": r.in_flight,
             "kv_usage": round(r.kv_usage, 4), "transport": "link" if r.link else "handle",
             "link_streams": r.link_streams} for r in rows]


def build_scaling_router(service, control: ScalingControl) -> APIRouter:
    """``service``: the ingress's InferenceService (admin auth, models, replica rows)."""
    router = APIRouter()

    async def admin(request: Request) -> None:
        from fleetserve.api.rest import bearer_key

        await service.gatekeeper.authenticate_admin(bearer_key(request.headers.get("authorization")))

    @router.get("/admin/scaling", summary="Scaling decisions, their inputs and overrides per model version (admin key).")
    async def scaling_status(request: Request) -> dict:
        await admin(request)
        return {"fleets": await control.status()}

    @router.post("/admin/scaling/{model}", summary="Override a model version's replica bounds and warm pool (admin key).")
    async def scale(model: str, request: Request) -> dict:
        await admin(request)  # before the body is read
        if model not in service.model_names():
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")
        body = parse_model(ScaleBody, parse_object(await read_body(request, MAX_SCALE_BODY_BYTES)))
        version = body.version or service.spec(model).version
        return await control.set_override(model, version, body.min_replicas, body.max_replicas, body.warm)

    @router.get("/admin/replicas", summary="Every replica: state, version, node, capacity type, load (admin key).")
    async def replicas(request: Request) -> dict:
        await admin(request)
        versions = {n: service.spec(n).version for n in service.model_names()}
        return {"replicas": replica_rows(service.replica_status(), versions)}

    return router
