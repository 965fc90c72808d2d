"""``fleetserve usage``: per-tenant, per-model usage from ``GET /admin/usage``.

With the admin key it shows every tenant (or ``--tenant``); with a tenant's own API key
(``--admin-key fs-...``) the server answers only that tenant's usage.
"""

from __future__ import annotations

import json as jsonlib
from typing import Optional

import typer

from fleetserve.cli.console import make_table, print_table
from fleetserve.cli.tenants import DEFAULT_URL, AdminKey, Json, Url, admin_request

FIELDS = ("requests", "prompt_tokens", "completion_tokens", "rejected")


def usage(
    tenant: Optional[str] = typer.Option(None, help="Only this tenant."),
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    json: Json = False,
) -> int:
    """Show usage per tenant and model (admin API)."""
    out = admin_request(url, admin_key, "GET", "/admin/usage", params={"tenant": tenant} if tenant else None)
    if json:
        print(jsonlib.dumps(out, indent=2))
        return 0
    rows = []
    for name in sorted(out["usage"]):
        for model in sorted(out["usage"][name]):
            f = out["usage"][name][model]
            rows.append((name, model) + tuple(str(f.get(k, 0)) for k in FIELDS))
    print_table(make_table(("tenant", "model") + FIELDS, rows))
    return 0
