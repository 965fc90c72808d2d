"""The real :class:`fleetserve.tenants.context.Gatekeeper`: registry + quotas + metering.

One instance per ingress replica. With Redis configured, all instances share the
registry, quotas and usage. Isolation rules enforced here:
- a context is derived only from the presented key, never from request fields;
- each tenant gets its own prefix-cache salt (``isolation``, on by default);
- usage reads are scoped: a tenant key can read only its own usage, the admin key any.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Optional

from fleetserve.clock import Clock, SystemClock
from fleetserve.errors import (
    AuthenticationError,
    ContextLengthError,
    FleetserveError,
    InvalidRequestError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from fleetserve.tenants.config import TenantsConfig, TenantSpec
from fleetserve.tenants.context import QuotaTicket, TenantContext
from fleetserve.tenants.keys import hash_api_key, strip_bearer
from fleetserve.tenants.metering import Metering
from fleetserve.tenants.quota import QuotaManager
from fleetserve.tenants.registry import TenantRegistry
from fleetserve.tenants.store import STORE_ERRORS, MemoryStore, RedisStore, TenantStore, Usage

log = logging.getLogger(__name__)

# Outcomes passed to complete(); anything else is recorded as given.
OUTCOME_OK = "ok"


class TenantGatekeeper:
    """Auth, quotas and metering behind the ingress."""

    def __init__(
        self,
        config: TenantsConfig,
        store: Optional[TenantStore] = None,
        clock: Optional[Clock] = None,
        metrics_registry=None,
    ) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        if store is None:
            store = RedisStore.from_url(config.redis_url, config.redis_key_prefix, config.redis_timeout_s) if config.redis_url else MemoryStore()
        self._store = store
        redis_client = store.client if isinstance(store, RedisStore) else None
        self.quotas = QuotaManager(config, redis_client, self._clock)
        self.metering = Metering(store, metrics_registry) if metrics_registry is not None else Metering(store)
        self.registry = TenantRegistry(config, store, self._clock, on_removed=self.metering.forget_tenant)
        self._started = False

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the registry. With Redis down at startup: fail_open serves the YAML tenants, fail_closed raises."""
        if self._started:
            return
        try:
            await self.registry.start()
        except STORE_ERRORS as e:
            if self.config.redis_failure_mode == "fail_closed":
                raise ServiceUnavailableError("tenant store unreachable at startup", retry_after_s=1.0) from e
            log.warning("tenant store unreachable at startup (%s); serving the YAML registry from memory", type(e).__name__)
            fallback = MemoryStore()
            for s in self.registry.initial_tenants():
                await fallback.put_tenant(s)
            self.registry.load_fallback(await fallback.load_tenants())
        self._started = True

    async def close(self) -> None:
        await self._store.close()

    # ---- Gatekeeper protocol ------------------------------------------------------------

    async def authenticate(self, api_key: Optional[str]) -> TenantContext:
        await self.start()
        key = strip_bearer(api_key)
        if key is None:
            raise AuthenticationError("missing API key (send 'Authorization: Bearer <key>')")
        await self.registry.refresh_if_due()
        spec = self.registry.find_by_key(key)
        if spec is None:
            raise AuthenticationError("invalid API key")
        return self.context_for(spec)

    async def authenticate_admin(self, api_key: Optional[str]) -> None:
        await self.start()
        key = strip_bearer(api_key)
        if key is None:
            raise AuthenticationError("missing admin key")
        if self.config.admin_key_hash is not None and hmac.compare_digest(
            hash_api_key(key).encode(), self.config.admin_key_hash.encode()
        ):
            return
        await self.registry.refresh_if_due()
        if self.registry.find_by_key(key) is not None:
            raise PermissionDeniedError("this endpoint needs the admin key, not a tenant key")
        raise AuthenticationError("invalid admin key")

    def authorize_model(self, ctx: TenantContext, model: str) -> None:
        if ctx.allowed_models is not None and model not in ctx.allowed_models:
            self.metering.note_rejection(ctx.tenant_id, model, PermissionDeniedError.code)
            raise PermissionDeniedError(f"tenant {ctx.tenant_id!r} may not use model {model!r}", field="model")

    def authorize_adapter(self, ctx: TenantContext, adapter: str) -> None:
        """``adapter``: the full name ``<model>:<id>`` (aliases are resolved before this)."""
        if ctx.allowed_adapters is not None and adapter not in ctx.allowed_adapters:
            self.metering.note_rejection(ctx.tenant_id, adapter, PermissionDeniedError.code)
            raise PermissionDeniedError(f"tenant {ctx.tenant_id!r} may not use adapter {adapter!r}", field="model")

    async def reserve_quota(self, ctx: TenantContext, model: str, request_id: str, prompt_tokens: int,
                            max_tokens: int) -> QuotaTicket:
        try:
            self._check_sizes(ctx, prompt_tokens, max_tokens)
            spec = self._current_spec(ctx)
            lease = await self.quotas.acquire(ctx.tenant_id, spec.quotas, request_id, prompt_tokens + max_tokens)
        except FleetserveError as e:
            await self.metering.record_rejection(ctx.tenant_id, model, e.code)
            raise
        return QuotaTicket(ctx, model, request_id, lease, self._clock.now())

    async def release_unserved(self, ticket: QuotaTicket, shed: bool) -> None:
        """The request never ran: the admission stage shed it (metered as a rejection) or its
        client left while it was queued. Nothing it reserved stays charged."""
        if ticket.settled:
            return
        ticket.settled = True
        quotas = self._quotas_of(ticket.ctx.tenant_id)
        if quotas is not None:
            await self.quotas.release(ticket.lease, quotas, 0)
        if shed:
            await self.metering.record_rejection(ticket.ctx.tenant_id, ticket.model, "shed")

    async def complete(self, ticket: QuotaTicket, prompt_tokens: int, completion_tokens: int, outcome: str) -> None:
        if ticket.settled:
            return  # exactly-once even if the ingress calls twice on an error path
        ticket.settled = True
        quotas = self._quotas_of(ticket.ctx.tenant_id)
        if quotas is not None:
            await self.quotas.release(ticket.lease, quotas, prompt_tokens + completion_tokens)
        await self.metering.record_completion(ticket.ctx.tenant_id, ticket.model, prompt_tokens, completion_tokens, outcome)

    def _quotas_of(self, tenant_id: str):
        try:
            return self.registry.get(tenant_id).quotas
        except FleetserveError:
            return None  # tenant removed meanwhile: nothing to refund against

    # ---- usage (scoped) -----------------------------------------------------------------

    async def usage(self, caller_key: Optional[str], tenant_id: Optional[str] = None) -> Usage:
        """Usage visible to the caller: the admin key sees any tenant, a tenant key only itself."""
        try:
            await self.authenticate_admin(caller_key)
        except PermissionDeniedError:
            ctx = await self.authenticate(caller_key)
            if tenant_id is not None and tenant_id != ctx.tenant_id:
                raise PermissionDeniedError("a tenant can read only its own usage", field="tenant") from None
            return await self.metering.usage(ctx.tenant_id)
        return await self.metering.usage(tenant_id)

    # ---- helpers ------------------------------------------------------------------------

    def context_for(self, spec: TenantSpec) -> TenantContext:
        q = spec.quotas
        return TenantContext(
            tenant_id=spec.id,
            tier=spec.tier,
            priority=self.config.priority_of(spec.tier),
            weight=spec.weight,
            cache_salt=cache_salt_for(spec.id) if self.config.isolation else None,
            allowed_models=frozenset(spec.allowed_models) if spec.allowed_models is not None else None,
            allowed_adapters=frozenset(spec.allowed_adapters) if spec.allowed_adapters is not None else None,
            max_context=q.max_context,
            max_tokens_per_request=q.max_tokens_per_request,
            stream_interval_s=self.config.scheduling.stream_interval_for(self.config.priority_of(spec.tier)),
            may_pin_version=spec.may_pin_version,
            prediction_log_opt_out=spec.prediction_log_opt_out,
        )

    def _current_spec(self, ctx: TenantContext) -> TenantSpec:
        try:
            return self.registry.get(ctx.tenant_id)
        except FleetserveError:
            raise AuthenticationError("tenant no longer exists") from None

    @staticmethod
    def _check_sizes(ctx: TenantContext, prompt_tokens: int, max_tokens: int) -> None:
        if ctx.max_tokens_per_request is not None and max_tokens > ctx.max_tokens_per_request:
            raise InvalidRequestError(
                f"max_tokens={max_tokens} exceeds this tenant's limit of {ctx.max_tokens_per_request}", field="max_tokens"
            )
        if ctx.max_context is not None and prompt_tokens + max_tokens > ctx.max_context:
            raise ContextLengthError(
                f"prompt ({prompt_tokens}) + max_tokens ({max_tokens}) exceeds this tenant's context limit of {ctx.max_context}",
                field="messages",
            )


def cache_salt_for(tenant_id: str) -> str:
    """Stable per-tenant prefix-cache salt, the same on every replica (affinity routing needs that).

    It need not be secret: clients can never set a salt; the ingress always takes it from here.
    """
    return "t-" + hashlib.sha256(f"fleetserve-cache-salt:{tenant_id}".encode()).hexdigest()[:16]


async def build_gatekeeper(config: TenantsConfig, clock: Optional[Clock] = None) -> TenantGatekeeper:
    """Construct and start a gatekeeper for one ingress replica."""
    gk = TenantGatekeeper(config, clock=clock)
    await gk.start()
    return gk
