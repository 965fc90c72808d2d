"""Admin REST routes: tenant management and usage. Mounted by the ingress.

All routes take ``Authorization: Bearer <admin key>``, except ``GET /admin/usage``, which
also accepts a tenant key and then shows only that tenant's usage. Errors are raised as
typed fleetserve errors; the ingress maps them to HTTP status codes once.

    POST   /admin/tenants                    create; returns the new API key (shown once)
    GET    /admin/tenants                    list (no key material)
    GET    /admin/tenants/{id}               one tenant
    PATCH  /admin/tenants/{id}               tier / weight / allowed_models / quotas (merged)
    POST   /admin/tenants/{id}/rotate-key    new key; ?keep_old=true keeps the old ones valid
    DELETE /admin/tenants/{id}               remove
    GET    /admin/usage[?tenant=ID]          usage per tenant and model
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from fleetserve.tenants.config import QuotaSpec, TenantSpec
from fleetserve.tenants.gatekeeper import TenantGatekeeper


class TenantCreate(BaseModel):
    """Body of POST /admin/tenants."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Tenant id.")
    tier: str = Field("standard", description="Tier name.")
    weight: float = Field(1.0, gt=0, description="Fair-share weight within the tier's class.")
    allowed_models: Optional[list[str]] = Field(None, description="Allowed models; null allows all.")
    quotas: QuotaSpec = Field(default_factory=QuotaSpec, description="Quotas.")


class TenantPatch(BaseModel):
    """Body of PATCH /admin/tenants/{id}; unset fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    tier: Optional[str] = Field(None, description="New tier.")
    weight: Optional[float] = Field(None, gt=0, description="New weight.")
    allowed_models: Optional[list[str]] = Field(None, description="New allowed models.")
    quotas: Optional[dict[str, Optional[int]]] = Field(None, description="Quota fields to change (null clears a limit).")


def build_admin_router(gatekeeper: TenantGatekeeper) -> APIRouter:
    """An APIRouter with the admin routes bound to ``gatekeeper``."""
    router = APIRouter(prefix="/admin", tags=["admin"])
    reg = gatekeeper.registry

    async def admin(authorization: Optional[str]) -> None:
        await gatekeeper.authenticate_admin(authorization)
        await reg.refresh_if_due()

    @router.post("/tenants", status_code=201)
    async def create_tenant(body: TenantCreate, authorization: Optional[str] = Header(None)) -> dict:
        await admin(authorization)
        spec = TenantSpec.model_validate(body.model_dump())
        key = await reg.add(spec)
        return {"tenant": reg.get(spec.id).public_dict(), "api_key": key}

    @router.get("/tenants")
    async def list_tenants(authorization: Optional[str] = Header(None)) -> dict:
        await admin(authorization)
        return {"tenants": [t.public_dict() for t in reg.list()]}

    @router.get("/tenants/{tenant_id}")
    async def get_tenant(tenant_id: str, authorization: Optional[str] = Header(None)) -> dict:
        await admin(authorization)
        return {"tenant": reg.get(tenant_id).public_dict()}

    @router.patch("/tenants/{tenant_id}")
    async def patch_tenant(tenant_id: str, body: TenantPatch, authorization: Optional[str] = Header(None)) -> dict:
        await admin(authorization)
        spec = await reg.update(
            tenant_id, tier=body.tier, weight=body.weight, allowed_models=body.allowed_models, quotas=body.quotas
        )
        return {"tenant": spec.public_dict()}

    @router.post("/tenants/{tenant_id}/rotate-key")
    async def rotate_key(tenant_id: str, keep_old: bool = Query(False), authorization: Optional[str] = Header(None)) -> dict:
        await admin(authorization)
        key = await reg.rotate_key(tenant_id, keep_old=keep_old)
        return {"tenant": reg.get(tenant_id).public_dict(), "api_key": key}

    @router.delete("/tenants/{tenant_id}")
    async def delete_tenant(tenant_id: str, authorization: Optional[str] = Header(None)) -> dict:
        await admin(authorization)
        await reg.remove(tenant_id)
        return {"deleted": tenant_id}

    @router.get("/usage")
    async def usage(tenant: Optional[str] = Query(None), authorization: Optional[str] = Header(None)) -> dict:
        return {"usage": await gatekeeper.usage(authorization, tenant)}

    return router
