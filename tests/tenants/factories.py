"""Shared builders for tenant tests: each takes ``**overrides``."""

from __future__ import annotations

from fleetserve.tenants.config import QuotaSpec, TenantsConfig, TenantSpec
from fleetserve.tenants.keys import hash_api_key


def make_spec(key: str = "fs-test-key", **overrides) -> TenantSpec:
    quotas = overrides.pop("quotas", {})
    fields = {"id": "acme", "tier": "standard", "weight": 1.0, "api_key_hashes": [hash_api_key(key)]}
    fields.update(overrides)
    return TenantSpec(quotas=QuotaSpec(**quotas), **fields)


def make_config(*specs: TenantSpec, **overrides) -> TenantsConfig:
    fields = {"tenants": list(specs), "admin_key_hash": hash_api_key("fs-admin-test"), "registry_refresh_s": 0.05}
    fields.update(overrides)
    return TenantsConfig(**fields)
