"""What the request path needs from multi-tenancy: the contract between ingress and tenants.

Three stages of :class:`fleetserve.api.service.InferenceService` are the tenants'. For every
request, in order:

1. authenticate: ``authenticate(api_key)`` -> :class:`TenantContext` (AuthenticationError),
   then ``authorize_model(ctx, model)`` and, for a LoRA adapter, ``authorize_adapter(ctx,
   adapter)`` (PermissionDeniedError);
2. quota: ``reserve_quota(ctx, model, request_id, prompt_tokens, max_tokens)`` ->
   :class:`QuotaTicket` (RateLimitError, or a 400 for sizes over the tenant's limits);
3. account: ``complete(ticket, prompt_tokens, completion_tokens, outcome)`` exactly once when
   the request ends (reconciles token quotas against actual usage, records metering); or,
   for a request that never ran because the admission stage shed it or its client left
   while queued, ``release_unserved(ticket, shed)``.

The admission queue itself (classes, fair share, shedding, preemption) is not the tenants':
it is :mod:`fleetserve.admission`. Admin endpoints call ``authenticate_admin(api_key)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol

if TYPE_CHECKING:  # quota imports redis; the contract stays light
    from fleetserve.tenants.quota import QuotaLease


@dataclass(frozen=True)
class TenantContext:
    """An authenticated caller. ``priority`` uses the engine convention (lower runs first)."""

    tenant_id: str
    tier: str
    priority: int
    weight: float
    cache_salt: Optional[str]
    allowed_models: Optional[frozenset[str]] = None  # None: every model
    allowed_adapters: Optional[frozenset[str]] = None  # None: every adapter of its models (full names)
    max_context: Optional[int] = None
    max_tokens_per_request: Optional[int] = None
    stream_interval_s: float = 0.0  # see FleetSchedulingConfig.stream_interval_s
    may_pin_version: bool = False  # its version pin header counts (TenantSpec.may_pin_version)
    prediction_log_opt_out: bool = False  # never in the prediction log (TenantSpec.prediction_log_opt_out)


@dataclass
class QuotaTicket:
    """What the quota stage charged for one request; hand it back exactly once."""

    ctx: TenantContext
    model: str  # what metering keys usage by: the model called (a LoRA adapter's full name, else the model)
    request_id: str
    lease: QuotaLease
    reserved_at: float
    settled: bool = False  # set by complete / release_unserved (they are idempotent)

    @property
    def charged_tokens(self) -> int:
        return self.lease.charged_tokens


class Gatekeeper(Protocol):
    """Auth, quotas and metering for the ingress."""

    async def authenticate(self, api_key: Optional[str]) -> TenantContext: ...

    async def authenticate_admin(self, api_key: Optional[str]) -> None: ...

    def authorize_model(self, ctx: TenantContext, model: str) -> None: ...

    def authorize_adapter(self, ctx: TenantContext, adapter: str) -> None: ...

    async def reserve_quota(self, ctx: TenantContext, model: str, request_id: str, prompt_tokens: int,
                            max_tokens: int) -> QuotaTicket: ...

    async def release_unserved(self, ticket: QuotaTicket, shed: bool) -> None: ...

    async def complete(self, ticket: QuotaTicket, prompt_tokens: int, completion_tokens: int, outcome: str) -> None: ...
