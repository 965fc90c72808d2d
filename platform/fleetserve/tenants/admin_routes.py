"""Admin REST routes: tenant management and usage. Mounted by the ingress.

All routes take ``Authorization: Bearer <admin key>``, except ``GET /admin/usage``, which
also accepts a tenant key and then shows only that tenant's usage. The key is checked
before any input is validated. Errors are raised as typed fleetserve errors (400 naming the
field, 404 unknown tenant, 409 duplicate id); the ingress maps them to HTTP status codes once.

    POST   /admin/tenants                    create; returns the new API key (shown once)
    GET    /admin/tenants                    list (no key material)
    GET    /admin/tenants/{id}               one tenant
    PATCH  /admin/tenants/{id}               tier / weight / allowed_models / allowed_adapters / quotas
    POST   /admin/tenants/{id}/rotate-key    new key; ?keep_old=true keeps the old ones valid
    DELETE /admin/tenants/{id}               remove
    GET    /admin/usage[?tenant=ID]          usage per tenant and model
"""

from __future__ import annotations

from typing import Annotated, Awaitable, Callable, Literal, Optional

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetserve.errors import ConflictError, InvalidRequestError
from fleetserve.tenants.config import MAX_QUOTA, MAX_WEIGHT, QuotaSpec, TenantSpec
from fleetserve.tenants.gatekeeper import TenantGatekeeper

QuotaField = Literal["requests_per_min", "tokens_per_min", "max_concurrent", "max_context", "max_tokens_per_request"]


MAX_ALLOWED_MODELS = 256
ModelName = Annotated[str, Field(min_length=1, max_length=128)]


class TenantCreate(BaseModel):
    """Body of POST /admin/tenants."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, description="Tenant id: letters, digits, '_', '.', '-'.")
    tier: str = Field("standard", min_length=1, max_length=64, description="Tier name (tenants.tiers).")
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT, description="Fair-share weight within the tier's class.")
    allowed_models: Optional[list[ModelName]] = Field(None, max_length=MAX_ALLOWED_MODELS,
                                                      description="Allowed models; null allows all.")
    allowed_adapters: Optional[list[ModelName]] = Field(None, max_length=MAX_ALLOWED_MODELS,
                                                        description="Allowed LoRA adapters ('<model>:<id>'); null allows all.")
    quotas: QuotaSpec = Field(default_factory=QuotaSpec, description="Quotas.")


class TenantPatch(BaseModel):
    """Body of PATCH /admin/tenants/{id}; unset fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    tier: Optional[str] = Field(None, min_length=1, max_length=64, description="New tier.")
    weight: Optional[float] = Field(None, gt=0, le=MAX_WEIGHT, description="New weight.")
    allowed_models: Optional[list[ModelName]] = Field(None, max_length=MAX_ALLOWED_MODELS,
                                                      description="New allowed models.")
    allowed_adapters: Optional[list[ModelName]] = Field(None, max_length=MAX_ALLOWED_MODELS,
                                                        description="New allowed LoRA adapters.")
    quotas: Optional[dict[QuotaField, Optional[Annotated[int, Field(ge=1, le=MAX_QUOTA)]]]] = Field(
        None, description="Quota fields to change (null clears a limit).")


ADMIN_BODY_MODELS = (TenantCreate, TenantPatch)

# What the API edge hands in to read a body: bounded size, JSON, depth, Unicode, then the
# model (fleetserve.api.json_body.read_model); every failure a 400/413 naming the field.
BodyReader = Callable[[Request, type[BaseModel]], Awaitable[BaseModel]]

_AUTH = {401: {"description": "Missing or invalid admin key."}, 403: {"description": "Not the admin key."},
         503: {"description": "The tenant store is unreachable."}}
_UNKNOWN = {404: {"description": "Unknown tenant."}}
_INVALID = {400: {"description": "Invalid body: `error.param` names the field."},
            413: {"description": "Body too large."}}


def _body(model_cls: type[BaseModel]) -> dict:
    ref = {"$ref": f"#/components/schemas/{model_cls.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def build_admin_router(gatekeeper: TenantGatekeeper, read_body: BodyReader) -> APIRouter:
    """An APIRouter with the admin routes bound to ``gatekeeper``.

    The admin key is checked first (a router dependency runs before FastAPI validates any
    parameter, and bodies are read only inside the handlers), then the input is validated.
    """
    reg = gatekeeper.registry

    async def admin(request: Request) -> None:
        await gatekeeper.authenticate_admin(request.headers.get("authorization"))
        await reg.refresh_if_due()

    router = APIRouter(prefix="/admin", tags=["admin"])
    tenants = APIRouter(dependencies=[Depends(admin)], responses=_AUTH)

    @tenants.post("/tenants", status_code=201, openapi_extra=_body(TenantCreate),
                  responses={**_INVALID, 409: {"description": "A tenant with this id exists."}})
    async def create_tenant(request: Request) -> dict:
        body = await read_body(request, TenantCreate)
        spec = _spec(body)
        if any(t.id == spec.id for t in reg.list()):
            raise ConflictError(f"tenant {spec.id!r} already exists", field="id")
        key = await reg.add(spec)
        return {"tenant": reg.get(spec.id).public_dict(), "api_key": key}

    @tenants.get("/tenants")
    async def list_tenants() -> dict:
        return {"tenants": [t.public_dict() for t in reg.list()]}

    @tenants.get("/tenants/{tenant_id}", responses=_UNKNOWN)
    async def get_tenant(tenant_id: str) -> dict:
        return {"tenant": reg.get(tenant_id).public_dict()}

    @tenants.patch("/tenants/{tenant_id}", openapi_extra=_body(TenantPatch), responses={**_INVALID, **_UNKNOWN})
    async def patch_tenant(tenant_id: str, request: Request) -> dict:
        reg.get(tenant_id)  # 404 before the body is read
        body = await read_body(request, TenantPatch)
        spec = await reg.update(
            tenant_id, tier=body.tier, weight=body.weight, allowed_models=body.allowed_models, quotas=body.quotas,
            allowed_adapters=body.allowed_adapters,
        )
        return {"tenant": spec.public_dict()}

    @tenants.post("/tenants/{tenant_id}/rotate-key", responses={**_UNKNOWN, 400: _INVALID[400]})
    async def rotate_key(tenant_id: str, keep_old: bool = Query(False)) -> dict:
        key = await reg.rotate_key(tenant_id, keep_old=keep_old)
        return {"tenant": reg.get(tenant_id).public_dict(), "api_key": key}

    @tenants.delete("/tenants/{tenant_id}", responses=_UNKNOWN)
    async def delete_tenant(tenant_id: str) -> dict:
        await reg.remove(tenant_id)
        return {"deleted": tenant_id}

    @router.get("/usage", responses={**_AUTH, 403: {"description": "A tenant key asked for another tenant."}})
    async def usage(request: Request, tenant: Optional[str] = Query(None, max_length=64)) -> dict:
        return {"usage": await gatekeeper.usage(request.headers.get("authorization"), tenant)}

    router.include_router(tenants)
    return router


def _spec(body: TenantCreate) -> TenantSpec:
    """The stored spec; the id pattern is TenantSpec's check, reported as a 400 on ``id``."""
    try:
        return TenantSpec.model_validate(body.model_dump())
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequestError(f"{field}: {err['msg']}", field=field) from None
