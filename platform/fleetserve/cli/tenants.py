"""``fleetserve tenants add|list|set-quota|rotate-key|remove``: tenant management over the admin REST API.

Talks to a running fleetserve (``--url``) with the admin key (``--admin-key`` or the
``FLEETSERVE_ADMIN_KEY`` environment variable). New API keys are printed once, on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"

# CLI flag -> quota field (one table for `add` and `set-quota`).
QUOTA_FLAGS = {
    "rpm": "requests_per_min",
    "tpm": "tokens_per_min",
    "max_concurrent": "max_concurrent",
    "max_context": "max_context",
    "max_tokens": "max_tokens_per_request",
}


class AdminAPIError(Exception):
    """The admin API answered with an error (message is the server's, OpenAI-shaped)."""


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("FLEETSERVE_URL", DEFAULT_URL), help="fleetserve REST address (env FLEETSERVE_URL).")
    p.add_argument("--admin-key", default=None, help="Admin key (default: env FLEETSERVE_ADMIN_KEY).")
    p.add_argument("--json", action="store_true", help="Print raw JSON.")


def admin_request(args: argparse.Namespace, method: str, path: str, **kwargs) -> dict:
    """One admin API call; raises AdminAPIError with the server's message on 4xx/5xx."""
    key = args.admin_key or os.environ.get("FLEETSERVE_ADMIN_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=args.url, headers=headers, timeout=10.0) as client:
            resp = client.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        raise AdminAPIError(f"cannot reach {args.url}: {e}") from e
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code >= 400:
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else None
        raise AdminAPIError(f"HTTP {resp.status_code}: {msg or resp.text[:200]}")
    return body


def register(subparsers) -> None:
    parser = subparsers.add_parser("tenants", help="Manage tenants (admin API).")
    sub = parser.add_subparsers(dest="tenants_command", metavar="TENANTS_COMMAND")

    add = sub.add_parser("add", help="Create a tenant and print its API key (once).")
    add.add_argument("id", help="Tenant id.")
    add.add_argument("--tier", default="standard", help="Tier (default: standard).")
    add.add_argument("--weight", type=float, default=1.0, help="Fair-share weight within its class (default 1).")
    add.add_argument("--models", default=None, help="Comma-separated allowed models (default: all).")
    _quota_args(add)
    add.set_defaults(func=_wrap(_add))

    ls = sub.add_parser("list", help="List tenants.")
    ls.set_defaults(func=_wrap(_list))

    sq = sub.add_parser("set-quota", help="Change quotas (and optionally tier/weight) of a tenant.")
    sq.add_argument("id", help="Tenant id.")
    sq.add_argument("--tier", default=None, help="New tier.")
    sq.add_argument("--weight", type=float, default=None, help="New weight.")
    _quota_args(sq)
    sq.set_defaults(func=_wrap(_set_quota))

    rk = sub.add_parser("rotate-key", help="Issue a new API key and print it (once).")
    rk.add_argument("id", help="Tenant id.")
    rk.add_argument("--keep-old", action="store_true", help="Keep old keys valid (grace period); remove them with another rotate.")
    rk.set_defaults(func=_wrap(_rotate))

    rm = sub.add_parser("remove", help="Delete a tenant.")
    rm.add_argument("id", help="Tenant id.")
    rm.set_defaults(func=_wrap(_remove))

    for p in (add, ls, sq, rk, rm):
        add_connection_args(p)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _quota_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=int, default=None, help="Requests per minute.")
    p.add_argument("--tpm", type=int, default=None, help="Tokens (prompt + max_tokens) per minute.")
    p.add_argument("--max-concurrent", type=int, default=None, help="Requests in flight at once.")
    p.add_argument("--max-context", type=int, default=None, help="Largest prompt + max_tokens of one request.")
    p.add_argument("--max-tokens", type=int, default=None, help="Largest max_tokens of one request.")


def _quotas(args: argparse.Namespace) -> dict:
    return {field: getattr(args, flag) for flag, field in QUOTA_FLAGS.items() if getattr(args, flag) is not None}


def _wrap(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args) or 0
        except AdminAPIError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    return run


def _print_tenant_table(tenants: list[dict]) -> None:
    cols = ("id", "tier", "weight", "models", "rpm", "tpm", "concurrent", "keys")
    rows = [cols]
    for t in tenants:
        q = t.get("quotas", {})
        models = ",".join(t["allowed_models"]) if t.get("allowed_models") is not None else "*"
        rows.append((t["id"], t["tier"], f"{t['weight']:g}", models, _q(q, "requests_per_min"), _q(q, "tokens_per_min"),
                     _q(q, "max_concurrent"), str(t.get("num_keys", 0))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _q(q: dict, name: str) -> str:
    v: Optional[int] = q.get(name)
    return "-" if v is None else str(v)


def _add(args: argparse.Namespace) -> int:
    body = {"id": args.id, "tier": args.tier, "weight": args.weight, "quotas": _quotas(args)}
    if args.models:
        body["allowed_models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    out = admin_request(args, "POST", "/admin/tenants", json=body)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"created tenant {out['tenant']['id']} ({out['tenant']['tier']})")
        print(f"API key (shown once): {out['api_key']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    out = admin_request(args, "GET", "/admin/tenants")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_tenant_table(out["tenants"])
    return 0


def _set_quota(args: argparse.Namespace) -> int:
    body: dict = {"quotas": _quotas(args)}
    if args.tier is not None:
        body["tier"] = args.tier
    if args.weight is not None:
        body["weight"] = args.weight
    out = admin_request(args, "PATCH", f"/admin/tenants/{args.id}", json=body)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_tenant_table([out["tenant"]])
    return 0


def _rotate(args: argparse.Namespace) -> int:
    out = admin_request(args, "POST", f"/admin/tenants/{args.id}/rotate-key", params={"keep_old": str(args.keep_old).lower()})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"new API key for {args.id} (shown once): {out['api_key']}")
        print("old keys remain valid" if args.keep_old else "old keys no longer work")
    return 0


def _remove(args: argparse.Namespace) -> int:
    admin_request(args, "DELETE", f"/admin/tenants/{args.id}")
    print(f"removed tenant {args.id}")
    return 0
