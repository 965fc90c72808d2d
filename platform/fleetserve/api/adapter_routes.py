"""Admin REST routes for LoRA adapters (admin key; checked before any body is read).

    GET    /admin/adapters[?model=M]     adapters in the shared catalog (and, with
                                         ?replicas=true, what each replica holds resident)
    POST   /admin/adapters               add one: {"model", "id", "path", "aliases"}; pushed
                                         to every live replica of the model, which loads and
                                         validates it (a refusal rolls the add back: 400)
    DELETE /admin/adapters/{name}        remove (full name or alias); each replica evicts it
                                         (409 while requests run with it on some replica)

Replicas that start later load an adapter from its path when a request first names it.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetserve.api.adapters import AdapterEntry, adapter_revision
from fleetserve.api.errors import as_fleetserve_error
from fleetserve.api.json_body import read_model
from fleetserve.deployments.replica_control import AdapterControl
from fleetserve.errors import ConflictError, FleetserveError, InvalidRequestError


class AdapterCreate(BaseModel):
    """Body of POST /admin/adapters."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128, description="Base model (a configured model name).")
    id: str = Field(min_length=1, max_length=64, description="Adapter id; clients call it '<model>:<id>'.")
    path: str = Field(min_length=1, max_length=4096, description="PEFT adapter directory, readable on every node.")
    aliases: list[str] = Field(default_factory=list, max_length=16, description="More model names for it.")


_AUTH = {401: {"description": "Missing or invalid admin key."}, 403: {"description": "Not the admin key."}}


def build_adapter_router(service, control: Optional[AdapterControl]) -> APIRouter:
    """``service``: the ingress's InferenceService (auth, catalog, replica rows); ``control``
    reaches the replicas (None: the catalog changes, replicas load lazily)."""
    router = APIRouter(prefix="/admin", tags=["admin"], responses=_AUTH)
    catalog = service.adapters

    async def admin(request: Request) -> None:
        from fleetserve.api.rest import bearer_key

        await service.gatekeeper.authenticate_admin(bearer_key(request.headers.get("authorization")))

    def replicas_of(model: str) -> list[str]:
        # The model's own deployment (reached through its handle); spot-twin replicas load
        # an adapter lazily, with the first request that names it.
        return [r.replica for r in service.replica_status() if r.model == model and r.target is None]

    @router.get("/adapters", summary="LoRA adapters served (admin key).")
    async def list_adapters(request: Request, model: Optional[str] = Query(None, max_length=128),
                            replicas: bool = Query(False)) -> dict:
        await admin(request)
        await catalog.reload()  # the fleet's catalog, not this replica's copy of it
        out: dict = {"adapters": [e.to_dict() for e in catalog.list(model)]}
        if replicas and control is not None:
            models = [model] if model is not None else service.model_names()
            out["replicas"] = [row for m in models for row in await _push(control.list_adapters, m, replicas_of(m))]
        return out

    @router.post("/adapters", status_code=201, summary="Add a LoRA adapter and load it on every replica (admin key).",
                 responses={400: {"description": "Invalid body or adapter."}, 404: {"description": "Unknown model."},
                            409: {"description": "Name in use."}})
    async def add_adapter(request: Request) -> dict:
        await admin(request)
        body = await read_model(request, AdapterCreate)
        revision = await asyncio.to_thread(adapter_revision, body.path)
        entry = await catalog.put(AdapterEntry(body.model, body.id, body.path, revision, tuple(body.aliases)))
        results: list[dict] = []
        if control is not None:
            try:
                results = await _push(control.add_adapter, entry.base, replicas_of(entry.base), entry.ref)
            except FleetserveError:
                await catalog.remove(entry.name)
                raise
        return {"adapter": entry.to_dict(), "replicas": results}

    @router.delete("/adapters/{name:path}", summary="Remove a LoRA adapter from every replica (admin key).",
                   responses={404: {"description": "Unknown adapter."}, 409: {"description": "In use."}})
    async def remove_adapter(name: str, request: Request) -> dict:
        await admin(request)
        await catalog.reload()
        entry = catalog.get(name)
        results: list[dict] = []
        if control is not None:
            results = await _push(control.remove_adapter, entry.base, replicas_of(entry.base), entry.name)
        await catalog.remove(entry.name)
        return {"deleted": entry.name, "replicas": results}

    return router


async def _push(call, model: str, replica_ids: list[str], *args) -> list[dict]:
    """``call(model, replica_ids, *args)``, its errors typed: a replica that refuses the
    adapter's files is the caller's 400 (the path), an adapter in use a 409."""
    try:
        return await call(model, replica_ids, *args)
    except Exception as exc:  # noqa: BLE001 - Ray wraps the replica's typed error
        err = as_fleetserve_error(exc)
        if isinstance(err, (InvalidRequestError, ConflictError)) or err.code == "config_error":
            raise (err if isinstance(err, ConflictError) else InvalidRequestError(
                f"a replica refused the adapter: {err.message}", field="path")) from None
        raise err from None
