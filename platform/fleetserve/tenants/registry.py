"""The tenant registry: who exists, which keys they hold, their tier and quotas.

Each ingress replica keeps an in-memory copy indexed by key hash, so authentication never
waits on Redis. Changes (admin API, CLI) are written to the store and bump a version
counter; other replicas notice the new version within ``registry_refresh_s`` and reload.
No restart is needed for any change.

YAML and Redis: on first start against an empty Redis, the YAML/inline tenants are copied
in (once, guarded by SET NX). After that Redis is the source of truth, so runtime changes
survive restarts; edit tenants through the admin API/CLI, or flush the Redis keys to re-seed.
Without Redis, the registry lives in memory and starts from the YAML every time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import yaml
from pydantic import ValidationError

from fleetserve.clock import Clock, SystemClock
from fleetserve.errors import ConfigError, InvalidRequestError, NotFoundError, ServiceUnavailableError
from fleetserve.tenants.config import QuotaSpec, TenantsConfig, TenantSpec
from fleetserve.tenants.keys import generate_api_key, hash_api_key, key_matches_any
from fleetserve.tenants.store import STORE_ERRORS, TenantStore

log = logging.getLogger(__name__)


def load_tenants_yaml(path: str | Path) -> list[TenantSpec]:
    """Parse a registry file (``tenants: [...]``). Errors name the file and the field."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read tenant registry {p}: {e}", field="tenants.registry_file") from e
    if not isinstance(data, dict) or not isinstance(data.get("tenants", []), list):
        raise ConfigError(f"{p}: expected a mapping with a 'tenants' list", field="tenants")
    out = []
    for i, raw in enumerate(data.get("tenants", [])):
        try:
            out.append(TenantSpec.model_validate(raw))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"{p}: tenants[{i}].{loc}: {err['msg']}", field=f"tenants[{i}].{loc}") from e
    return out


class TenantRegistry:
    """Tenant specs with a key-hash index, synchronised through a :class:`TenantStore`."""

    def __init__(self, config: TenantsConfig, store: TenantStore, clock: Optional[Clock] = None,
                 on_removed: Optional[Callable[[str], None]] = None) -> None:
        """``on_removed``: called with the id of each tenant that leaves the registry (deleted
        here or, seen on a reload, by another replica): the metrics drop its series."""
        self._config = config
        self._on_removed = on_removed
        self._store = store
        self._clock = clock or SystemClock()
        self._tenants: dict[str, TenantSpec] = {}
        self._by_hash: dict[str, str] = {}
        self._version: Optional[int] = None
        self._last_check = float("-inf")
        self._store_down_logged = False

    # ---- startup / sync -------------------------------------------------------------

    def initial_tenants(self) -> list[TenantSpec]:
        specs = list(self._config.tenants)
        if self._config.registry_file:
            specs += load_tenants_yaml(self._config.registry_file)
        seen: set[str] = set()
        for s in specs:
            if s.id in seen:
                raise ConfigError(f"tenant {s.id!r} defined twice (inline and registry_file)", field="tenants")
            if s.tier not in self._config.tiers:
                raise ConfigError(f"tenant {s.id!r}: unknown tier {s.tier!r}", field=f"tenants[{s.id}].tier")
            seen.add(s.id)
        return specs

    async def start(self) -> None:
        """Seed the store from YAML (first start only) and load it. Raises STORE_ERRORS if the store is down."""
        specs = self.initial_tenants()
        if await self._store.claim_seed():
            for s in specs:
                await self._store.put_tenant(s)
        await self._reload()

    def load_fallback(self, tenants: dict[str, TenantSpec]) -> None:
        """Serve ``tenants`` while the store is unreachable (``fail_open`` at startup).

        No store version is known, so the first version the store reports (once it is
        back) triggers a reload, or a restore of these tenants if the store is empty.
        """
        self._set(tenants, None)

    async def _reload(self) -> None:
        version = await self._store.version()
        tenants = await self._store.load_tenants()
        self._set(tenants, version)

    def _set(self, tenants: dict[str, TenantSpec], version: Optional[int]) -> None:
        by_hash = {h: t.id for t in tenants.values() for h in t.api_key_hashes}
        removed = set(self._tenants) - set(tenants)
        self._tenants, self._by_hash, self._version = tenants, by_hash, version
        if self._on_removed is not None:
            for tenant_id in sorted(removed):
                self._on_removed(tenant_id)
        self._last_check = self._clock.now()

    async def refresh_if_due(self) -> None:
        """Pick up changes made by other replicas; keep the cached copy when the store is down."""
        if self._clock.now() - self._last_check < self._config.registry_refresh_s:
            return
        self._last_check = self._clock.now()
        try:
            version = await self._store.version()
            if version == self._version:
                pass
            elif version < (self._version or 0) or (version == 0 and self._tenants):
                await self._restore()
            else:
                await self._reload()
            self._store_down_logged = False
        except STORE_ERRORS as e:
            if not self._store_down_logged:
                log.warning("tenant store unreachable (%s); serving from the cached registry", type(e).__name__)
                self._store_down_logged = True

    async def _restore(self) -> None:
        """The store lost its state (e.g. Redis restarted without persistence): write our copy back.

        Only the replica that wins ``claim_seed`` writes; the others keep their cache and
        reload once the restored version (above any cached one) appears.
        """
        if await self._store.claim_seed():
            log.warning("tenant store lost its registry; restoring %d tenants from this replica's copy", len(self._tenants))
            self._version = await self._store.restore(list(self._tenants.values()), self._version or 0)

    # ---- reads ----------------------------------------------------------------------

    def find_by_key(self, key: str) -> Optional[TenantSpec]:
        """The tenant holding ``key``, or None.

        The dict lookup is keyed by the key's SHA-256, so its timing reveals nothing usable
        about the key; the final check is a constant-time comparison against the stored hashes.
        """
        tid = self._by_hash.get(hash_api_key(key))
        spec = self._tenants.get(tid) if tid is not None else None
        if spec is None or not key_matches_any(key, spec.api_key_hashes):
            return None
        return spec

    def get(self, tenant_id: str) -> TenantSpec:
        spec = self._tenants.get(tenant_id)
        if spec is None:
            raise NotFoundError(f"tenant {tenant_id!r} not found", field="tenant")
        return spec

    def list(self) -> list[TenantSpec]:
        return sorted(self._tenants.values(), key=lambda t: t.id)

    @property
    def version(self) -> Optional[int]:
        return self._version

    # ---- writes (admin API) ---------------------------------------------------------

    async def _write(self, spec: Optional[TenantSpec], delete_id: Optional[str] = None) -> None:
        try:
            if spec is not None:
                await self._store.put_tenant(spec)
            else:
                await self._store.delete_tenant(delete_id or "")
            await self._reload()
        except STORE_ERRORS as e:
            raise ServiceUnavailableError("tenant store unreachable; registry change not applied", retry_after_s=1.0) from e

    def _check_tier(self, tier: str) -> None:
        if tier not in self._config.tiers:
            raise InvalidRequestError(f"unknown tier {tier!r}; known: {sorted(self._config.tiers)}", field="tier")

    async def add(self, spec: TenantSpec) -> str:
        """Add a tenant with one freshly generated key; returns the plaintext key (shown once)."""
        await self.refresh_if_due()
        if spec.id in self._tenants:
            raise InvalidRequestError(f"tenant {spec.id!r} already exists", field="id")
        self._check_tier(spec.tier)
        key = generate_api_key()
        await self._write(spec.model_copy(update={"api_key_hashes": [hash_api_key(key)]}))
        return key

    async def update(
        self,
        tenant_id: str,
        *,
        tier: Optional[str] = None,
        weight: Optional[float] = None,
        allowed_models: Optional[list[str]] = None,
        quotas: Optional[dict] = None,
        allowed_adapters: Optional[list[str]] = None,
    ) -> TenantSpec:
        """Change tier/weight/models or merge quota fields (unset fields keep their value)."""
        spec = self.get(tenant_id)
        update: dict = {}
        if tier is not None:
            self._check_tier(tier)
            update["tier"] = tier
        if weight is not None:
            update["weight"] = weight
        if allowed_models is not None:
            update["allowed_models"] = allowed_models
        if allowed_adapters is not None:
            update["allowed_adapters"] = allowed_adapters
        if quotas:
            try:
                update["quotas"] = QuotaSpec.model_validate({**spec.quotas.model_dump(), **quotas})
            except ValidationError as e:
                err = e.errors()[0]
                raise InvalidRequestError(f"quotas.{err['loc'][0]}: {err['msg']}", field=f"quotas.{err['loc'][0]}") from e
        try:
            new = TenantSpec.model_validate({**spec.model_dump(), **{k: v for k, v in update.items() if k != "quotas"}, "quotas": update.get("quotas", spec.quotas)})
        except ValidationError as e:
            err = e.errors()[0]
            raise InvalidRequestError(f"{err['loc'][0]}: {err['msg']}", field=str(err["loc"][0])) from e
        await self._write(new)
        return new

    async def rotate_key(self, tenant_id: str, keep_old: bool = False) -> str:
        """Issue a new key; old keys stop working unless ``keep_old`` (for a grace period)."""
        spec = self.get(tenant_id)
        key = generate_api_key()
        hashes = (list(spec.api_key_hashes) if keep_old else []) + [hash_api_key(key)]
        await self._write(spec.model_copy(update={"api_key_hashes": hashes}))
        return key

    async def remove(self, tenant_id: str) -> None:
        self.get(tenant_id)
        await self._write(None, delete_id=tenant_id)
