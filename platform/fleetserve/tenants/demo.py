"""The tenants of ``fleetserve serve`` with no config: one demo tenant and an admin key.

Both keys are generated fresh at every start and shown once; only their hashes enter the
config that is shipped to ingress replicas.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, TextIO

from fleetserve.tenants.config import QuotaSpec, TenantsConfig, TenantSpec
from fleetserve.tenants.keys import ADMIN_KEY_PREFIX, generate_api_key, hash_api_key

DEMO_TENANT_ID = "demo"


@dataclass(frozen=True)
class DemoCredentials:
    """Plaintext keys for the local demo. Print once; never log."""

    tenant_id: str
    api_key: str
    admin_key: str

    def __repr__(self) -> str:
        return f"DemoCredentials(tenant_id={self.tenant_id!r}, api_key=<hidden>, admin_key=<hidden>)"


def demo_tenants_config(base: Optional[TenantsConfig] = None) -> tuple[TenantsConfig, DemoCredentials]:
    """``base`` (default: an empty in-memory config) plus a demo tenant and a fresh admin key."""
    base = base or TenantsConfig()
    api_key, admin_key = generate_api_key(), generate_api_key(ADMIN_KEY_PREFIX)
    demo = TenantSpec(
        id=DEMO_TENANT_ID,
        tier="premium" if "premium" in base.tiers else next(iter(base.tiers)),
        api_key_hashes=[hash_api_key(api_key)],
        quotas=QuotaSpec(requests_per_min=600, tokens_per_min=600_000, max_concurrent=64),
    )
    tenants = [t for t in base.tenants if t.id != DEMO_TENANT_ID] + [demo]
    config = base.model_copy(update={"tenants": tenants, "admin_key_hash": hash_api_key(admin_key)})
    return config, DemoCredentials(DEMO_TENANT_ID, api_key, admin_key)


def print_demo_credentials(creds: DemoCredentials, out: TextIO = sys.stdout) -> None:
    """The one place the demo keys are shown: once, on stdout (the terminal), never through ``logging``."""
    out.write(
        f"  demo tenant : {creds.tenant_id}\n"
        f"  API key     : {creds.api_key}   (export DEMO_KEY=... for the curl below)\n"
        f"  admin key   : {creds.admin_key}   (export FLEETSERVE_ADMIN_KEY=... for `fleetserve tenants`)\n"
    )
    out.flush()
