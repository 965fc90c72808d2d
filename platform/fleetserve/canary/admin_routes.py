"""Admin REST routes for model versions (admin key). Mounted by the ingress.

    GET    /admin/models/{model}/versions              versions, their deployment status, the split
    POST   /admin/models/{model}/versions              register (checksum computed here) and deploy
    POST   /admin/models/{model}/versions/{version}/deploy   (re)start a registered version's deployment
    PUT    /admin/models/{model}/weights               set the split (only ready, unblocked versions)
    DELETE /admin/models/{model}/versions/{version}    refused while it has weight; drains, then removes

The deployer is injected (:class:`VersionDeployer`; on Ray Serve,
``fleetserve.application.versions.ServeVersionDeployer``). A version whose deployment fails
(its replica refuses a checkpoint that no longer matches the registered checksum) is marked
``blocked`` with Serve's message as the reason; the registry then refuses it any weight.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional, Protocol

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetserve.canary.errors import VersionConflictError
from fleetserve.canary.serving import VersionTable
from fleetserve.canary.versions import ModelVersion, VersionState, make_version
from fleetserve.errors import ModelNotFoundError

READY, FAILED = "ready", "failed"

# What the API edge hands in to read a body (bounded, JSON, then the model; 400/413 naming the field).
BodyReader = Callable[[Request, type[BaseModel]], Awaitable[BaseModel]]


class VersionDeployer(Protocol):
    """Starts, inspects and stops the deployment of one (model, version)."""

    async def deploy(self, version: ModelVersion) -> None: ...

    async def status(self, model: str, version: str) -> tuple[str, str]:
        """(``ready`` | ``deploying`` | ``failed`` | ``absent``, message)."""
        ...

    async def delete(self, model: str, version: str) -> None: ...


class VersionCreate(BaseModel):
    """Body of POST /admin/models/{model}/versions."""

    model_config = ConfigDict(extra="forbid")

    version_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                            description="Version id, unique within the model.")
    checkpoint: str = Field(description="Checkpoint directory (its checksum is computed at registration).")
    engine: str = Field("native", description="Engine backend of this version's replicas.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Engine args merged over the model's.")
    deploy: bool = Field(True, description="Start the version's deployment now.")


class WeightsBody(BaseModel):
    """Body of PUT /admin/models/{model}/weights."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(description="Version id -> share of traffic (normalised; zeros dropped).")


def json_body_ref(model_cls: type[BaseModel]) -> dict:
    """``openapi_extra`` naming the body schema: the body is read in the handler, after the
    admin key, so FastAPI cannot infer it (the REST app registers the schema)."""
    ref = {"$ref": f"#/components/schemas/{model_cls.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def build_version_router(authenticate_admin: Callable[[Optional[str]], Awaitable[None]], table: VersionTable,
                         deployer: VersionDeployer, checkpoints: dict[str, str], *, read_body: BodyReader) -> APIRouter:
    """``checkpoints``: model -> its stable (configured) checkpoint, registered as the stable
    version the first time the model gets another one. ``read_body``: the API edge's bounded
    body reader (``fleetserve.api.json_body.read_model``), called only after the admin key
    was checked, so an unauthenticated caller learns nothing from validation errors."""
    router = APIRouter(prefix="/admin/models", tags=["admin"])
    reg = table.registry
    watches: set[asyncio.Task] = set()

    async def admin(model: str, authorization: Optional[str]) -> None:
        await authenticate_admin(authorization)
        if model not in checkpoints:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")

    async def ensure_stable(model: str) -> None:
        stable = table.stable_version(model)
        if await reg.get(model, stable) is None:
            v = await asyncio.to_thread(make_version, model, stable, checkpoints[model], state=VersionState.STABLE)
            try:
                await reg.register(v)
            except VersionConflictError:
                pass  # another ingress replica registered it meanwhile

    async def reconcile(model: str, v: ModelVersion) -> dict:
        """The version as a dict with its deployment status; a failed deployment blocks it."""
        if v.version_id == table.stable_version(model):
            return {**v.to_dict(), "deployment": READY, "message": ""}
        status, message = await deployer.status(model, v.version_id)
        if status == FAILED and v.state is not VersionState.BLOCKED:
            v = await reg.set_state(model, v.version_id, VersionState.BLOCKED, message or "deployment failed")
            table.invalidate(model)
        return {**v.to_dict(), "deployment": status, "message": message}

    async def watch(model: str, version_id: str, timeout_s: float = 1800.0, every_s: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            row = await reconcile(model, await reg.require(model, version_id))
            if row["deployment"] in (READY, FAILED):
                return
            await asyncio.sleep(every_s)  # polling Serve's status; not a test synchronisation

    @router.get("/{model}/versions")
    async def list_versions(model: str, authorization: Optional[str] = Header(None)) -> dict:
        await admin(model, authorization)
        rows = [await reconcile(model, v) for v in await reg.versions(model)]
        return {"model": model, "stable": table.stable_version(model), "weights": await reg.weights(model),
                "versions": rows}

    @router.post("/{model}/versions", status_code=201, openapi_extra=json_body_ref(VersionCreate))
    async def register(model: str, request: Request, authorization: Optional[str] = Header(None)) -> dict:
        await admin(model, authorization)
        body: VersionCreate = await read_body(request, VersionCreate)
        await ensure_stable(model)
        v = await asyncio.to_thread(make_version, model, body.version_id, body.checkpoint, engine=body.engine,
                                    engine_args=body.engine_args)
        await reg.register(v)
        if body.deploy:
            await start(v)
        table.invalidate(model)
        return {"version": v.to_dict()}

    async def start(v: ModelVersion) -> None:
        await deployer.deploy(v)
        task = asyncio.get_running_loop().create_task(watch(v.model, v.version_id))
        watches.add(task)
        task.add_done_callback(watches.discard)

    @router.post("/{model}/versions/{version_id}/deploy")
    async def deploy(model: str, version_id: str, authorization: Optional[str] = Header(None)) -> dict:
        await admin(model, authorization)
        if version_id == table.stable_version(model):
            raise VersionConflictError(f"{model}@{version_id} is the configured stable version", field="version_id")
        v = await reg.require(model, version_id)
        if v.state is VersionState.BLOCKED:
            raise VersionConflictError(f"version {v.label} is blocked ({v.blocked_reason})", field="version_id")
        await start(v)
        return {"version": v.to_dict()}

    @router.put("/{model}/weights", openapi_extra=json_body_ref(WeightsBody))
    async def set_weights(model: str, request: Request, authorization: Optional[str] = Header(None)) -> dict:
        await admin(model, authorization)
        body: WeightsBody = await read_body(request, WeightsBody)
        await ensure_stable(model)
        for vid, w in body.weights.items():
            if w > 0 and vid != table.stable_version(model):
                row = await reconcile(model, await reg.require(model, vid))
                if row["deployment"] != READY and row["state"] != VersionState.BLOCKED.value:
                    raise VersionConflictError(f"version {model}@{vid} is not ready to serve "
                                               f"({row['deployment']}); wait for it", field=f"weights.{vid}")
        weights = await reg.set_weights(model, body.weights)
        table.invalidate(model)
        return {"model": model, "weights": weights}

    @router.delete("/{model}/versions/{version_id}")
    async def delete_version(model: str, version_id: str, authorization: Optional[str] = Header(None)) -> dict:
        await admin(model, authorization)
        if version_id == table.stable_version(model):
            raise VersionConflictError(f"{model}@{version_id} is the configured stable version", field="version_id")
        await reg.require(model, version_id)
        if (await reg.weights(model)).get(version_id, 0.0) > 0:
            raise VersionConflictError(f"version {model}@{version_id} still carries traffic; "
                                       "move its weight to another version first", field="version_id")
        await deployer.delete(model, version_id)  # Serve drains its replicas
        await reg.remove(model, version_id)
        table.invalidate(model)
        return {"deleted": f"{model}@{version_id}"}

    return router
