"""``fleetserve usage``: per-tenant, per-model usage from ``GET /admin/usage``.

With the admin key it shows every tenant (or ``--tenant``); with a tenant's own API key
(``--admin-key fs-...``) the server answers only that tenant's usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from fleetserve.cli.tenants import AdminAPIError, add_connection_args, admin_request

FIELDS = ("requests", "prompt_tokens", "completion_tokens", "rejected")


def register(subparsers) -> None:
    p = subparsers.add_parser("usage", help="Show usage per tenant and model (admin API).")
    p.add_argument("--tenant", default=None, help="Only this tenant.")
    add_connection_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        out = admin_request(args, "GET", "/admin/usage", params={"tenant": args.tenant} if args.tenant else None)
    except AdminAPIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    rows = [("tenant", "model") + FIELDS]
    for tenant in sorted(out["usage"]):
        for model in sorted(out["usage"][tenant]):
            f = out["usage"][tenant][model]
            rows.append((tenant, model) + tuple(str(f.get(k, 0)) for k in FIELDS))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0
