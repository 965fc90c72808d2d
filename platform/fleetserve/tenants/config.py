"""The ``tenants`` section of the top-level config, and one tenant's spec.

A :class:`TenantSpec` is also what the registry stores (as JSON in Redis) and what the
admin API accepts, so it is the single schema for YAML, the admin API and the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetserve.admission.config import FleetSchedulingConfig

DEFAULT_TIERS = {"premium": 0, "standard": 1, "batch": 2}

# Sane upper bounds: a weight or limit past these is a typo, and unbounded integers would
# overflow Redis's 64-bit arithmetic in the shared token buckets.
MAX_WEIGHT = 1000.0
MAX_QUOTA = 10**12

_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class QuotaSpec(BaseModel):
    """Per-tenant limits. ``None`` means unlimited."""

    model_config = ConfigDict(extra="forbid")

    requests_per_min: Optional[int] = Field(None, ge=1, le=MAX_QUOTA, description="Token bucket of requests, refilled continuously over a minute.")
    tokens_per_min: Optional[int] = Field(
        None, ge=1, le=MAX_QUOTA,
        description="Token bucket of prompt+max_tokens charged at admission, reconciled to actual usage at completion.",
    )
    max_concurrent: Optional[int] = Field(None, ge=1, le=MAX_QUOTA, description="Requests of this tenant in flight at once, across all ingress replicas.")
    max_context: Optional[int] = Field(None, ge=1, le=MAX_QUOTA, description="Largest prompt_tokens + max_tokens accepted for one request.")
    max_tokens_per_request: Optional[int] = Field(None, ge=1, le=MAX_QUOTA, description="Largest max_tokens accepted for one request.")


class TenantSpec(BaseModel):
    """One tenant: identity, class, fair-share weight, allowed models, key hashes and quotas."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Tenant id: letters, digits, '_', '.', '-' (at most 64 characters).")
    tier: str = Field("standard", description="Tier name; maps to a priority class through TenantsConfig.tiers.")
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT, description="Weighted fair share between tenants of the same class (VTC weight).")
    allowed_models: Optional[list[str]] = Field(None, description="Models this tenant may call; null allows every model.")
    allowed_adapters: Optional[list[str]] = Field(
        None,
        description="LoRA adapters this tenant may call, by full name ('<model>:<id>'); null allows every adapter "
                    "of its allowed models, [] none. An alias is checked as the adapter it names.",
    )
    api_key_hashes: list[str] = Field(
        default_factory=list, description="Hashes of the tenant's API keys ('sha256:<hex>'), never plaintext keys."
    )
    quotas: QuotaSpec = Field(default_factory=QuotaSpec, description="Rate, concurrency and size limits.")
    may_pin_version: bool = Field(
        False, description="Honour this tenant's version pin header (canary.pin_header); others' pins are ignored."
    )
    prediction_log_opt_out: bool = Field(
        False, description="Never write this tenant's requests (prompts or outputs) to the sampled prediction log "
        "(canary.prediction_log)."
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _TENANT_ID.match(v):
            raise ValueError(f"id {v!r} must match {_TENANT_ID.pattern}")
        return v

    @field_validator("api_key_hashes")
    @classmethod
    def _check_hashes(cls, v: list[str]) -> list[str]:
        for h in v:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", h):
                # Catches the dangerous mistake of pasting a plaintext key into the YAML.
                raise ValueError("api_key_hashes entries must be 'sha256:<64 hex>' (use `fleetserve tenants add` or keys.hash_api_key)")
        return v

    def __repr__(self) -> str:
        # Hashes are omitted: even a hash of a key does not belong in logs.
        return (
            f"TenantSpec(id={self.id!r}, tier={self.tier!r}, weight={self.weight}, "
            f"allowed_models={self.allowed_models!r}, keys={len(self.api_key_hashes)}, quotas={self.quotas!r})"
        )

    __str__ = __repr__

    def public_dict(self) -> dict:
        """The spec without key hashes (what the admin API and CLI show)."""
        d = self.model_dump(exclude={"api_key_hashes"})
        d["num_keys"] = len(self.api_key_hashes)
        return d


class TenantsConfig(BaseModel):
    """The ``tenants`` section: tiers, tenants, Redis, failure mode, admin key, isolation, scheduling."""

    model_config = ConfigDict(extra="forbid")

    tiers: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_TIERS),
        description="Tier name -> priority class (engine convention: lower runs first).",
    )
    tenants: list[TenantSpec] = Field(default_factory=list, description="Tenants defined inline.")
    registry_file: Optional[str] = Field(None, description="YAML file with a 'tenants:' list (see tenants/example.yaml); merged with inline tenants. A relative path resolves against the working directory where the config is parsed.")
    redis_url: Optional[str] = Field(
        None, description="redis://host:port/db. When set, registry, quotas and usage are shared by all ingress replicas."
    )
    redis_key_prefix: str = Field("fleetserve:", description="Prefix of every Redis key fleetserve writes.")
    redis_failure_mode: Literal["fail_open", "fail_closed"] = Field(
        "fail_open",
        description="When Redis is unreachable: fail_open keeps serving with per-replica in-memory buckets; fail_closed answers 503.",
    )
    redis_timeout_s: float = Field(0.5, gt=0, description="Socket connect/read timeout for Redis calls.")
    redis_retry_interval_s: float = Field(
        1.0, gt=0, description="After a Redis failure, go straight to the failure mode for this long before trying Redis again."
    )
    registry_refresh_s: float = Field(
        1.0, gt=0, description="How often an ingress replica checks the Redis registry version for changes made elsewhere."
    )
    admin_key_hash: Optional[str] = Field(None, description="'sha256:<hex>' of the admin key; null disables the admin API.")
    isolation: bool = Field(True, description="Give each tenant its own prefix-cache salt.")
    concurrency_lease_s: float = Field(
        600.0, gt=0, description="A concurrency slot not released within this time (crashed ingress) is reclaimed."
    )
    scheduling: FleetSchedulingConfig = Field(
        default_factory=FleetSchedulingConfig, description="Cluster-wide admission queue, fair share, shedding and preemption."
    )

    @field_validator("registry_file")
    @classmethod
    def _absolute_registry(cls, v: Optional[str]) -> Optional[str]:
        # Resolved where the config is parsed (the driver): Ray actors that later re-validate
        # the shipped config may run in another working directory.
        if v is None:
            return v
        p = Path(v).expanduser()
        return str(p.resolve()) if p.exists() else str(p)

    @field_validator("admin_key_hash")
    @classmethod
    def _check_admin(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", v):
            raise ValueError("admin_key_hash must be 'sha256:<64 hex>'")
        return v

    @model_validator(mode="after")
    def _check_tiers(self) -> "TenantsConfig":
        ids = [t.id for t in self.tenants]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"tenants: duplicate id(s) {sorted(dup)}")
        for t in self.tenants:
            if t.tier not in self.tiers:
                raise ValueError(f"tenants[{t.id}].tier: unknown tier {t.tier!r}; known: {sorted(self.tiers)}")
        return self

    def priority_of(self, tier: str) -> int:
        """Priority class of a tier; unknown tiers get the lowest class (never a crash)."""
        if tier in self.tiers:
            return self.tiers[tier]
        return max(self.tiers.values(), default=0)
