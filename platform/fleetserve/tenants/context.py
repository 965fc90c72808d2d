"""What the API edge needs from multi-tenancy: the contract between ingress and tenants.

The ingress (REST and gRPC) calls, for every request, in order:

1. ``authenticate(api_key)`` -> :class:`TenantContext` (raises AuthenticationError);
2. ``authorize_model(ctx, model)`` (raises PermissionDeniedError);
3. ``admit(ctx, model, prompt_tokens, max_tokens)`` -> :class:`Admission` (raises
   RateLimitError / ServiceUnavailableError; may wait in the fleet admission queue);
4. ``complete(admission, prompt_tokens, completion_tokens, outcome)`` exactly once when the
   request ends (reconciles token quotas against actual usage, records metering).

Admin endpoints call ``authenticate_admin(api_key)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol


@dataclass(frozen=True)
class TenantContext:
    """An authenticated caller. ``priority`` uses the engine convention (lower runs first)."""

    tenant_id: str
    tier: str
    priority: int
    weight: float
    cache_salt: Optional[str]
    allowed_models: Optional[frozenset[str]] = None  # None: every model
    max_context: Optional[int] = None
    max_tokens_per_request: Optional[int] = None
    stream_interval_s: float = 0.0  # see FleetSchedulingConfig.stream_interval_s


@dataclass
class Admission:
    """A ticket for one admitted request; pass it back to ``complete``."""

    ctx: TenantContext
    model: str
    request_id: str
    charged_tokens: int
    admitted_at: float
    extra: dict = field(default_factory=dict)


class Gatekeeper(Protocol):
    """Auth, quotas, fleet admission and metering for the ingress."""

    async def authenticate(self, api_key: Optional[str]) -> TenantContext: ...

    async def authenticate_admin(self, api_key: Optional[str]) -> None: ...

    def authorize_model(self, ctx: TenantContext, model: str) -> None: ...

    async def admit(self, ctx: TenantContext, model: str, request_id: str, prompt_tokens: int, max_tokens: int) -> Admission: ...

    async def complete(self, admission: Admission, prompt_tokens: int, completion_tokens: int, outcome: str) -> None: ...
