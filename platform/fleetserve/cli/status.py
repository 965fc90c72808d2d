"""``fleetserve status [--url URL] [--admin-key KEY]``: models, replicas, queue depth and KV
usage per replica, from the authenticated admin API (``GET /admin/status``)."""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_URL = "http://127.0.0.1:8000"


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="Show models, replicas, queue depth and KV usage.")
    p.add_argument("--url", default=os.environ.get("FLEETSERVE_URL", DEFAULT_URL), help=f"Base URL (default {DEFAULT_URL} or $FLEETSERVE_URL).")
    p.add_argument("--admin-key", default=os.environ.get("FLEETSERVE_ADMIN_KEY"), help="Admin key (default $FLEETSERVE_ADMIN_KEY).")
    p.add_argument("--json", action="store_true", help="Print the raw JSON.")
    p.set_defaults(func=run)


def format_table(status: dict) -> str:
    header = ("MODEL", "VERSION", "REPLICA", "WAITING", "RUNNING", "KV USAGE", "STATE", "STATS AGE")
    rows = []
    for m in status.get("models", []):
        if not m.get("replicas"):
            rows.append((m["name"], m.get("version", ""), "-", "-", "-", "-", "no replica", "-"))
        for r in m.get("replicas", []):
            state = "draining" if r.get("draining") else ("healthy" if r.get("healthy", True) else "unhealthy")
            age = r.get("stats_age_s")
            rows.append((m["name"], m.get("version", ""), r["replica"], str(r["waiting"]), str(r["running"]),
                         f"{100 * r['kv_usage']:.1f}%", state, "-" if age is None else f"{age:.1f}s"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    total = sum(len(m.get("replicas", [])) for m in status.get("models", []))
    lines.append(f"{len(status.get('models', []))} model(s), {total} replica(s)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import httpx

    if not args.admin_key:
        print("fleetserve status: an admin key is required (--admin-key or $FLEETSERVE_ADMIN_KEY)", file=sys.stderr)
        return 2
    try:
        r = httpx.get(args.url.rstrip("/") + "/admin/status", headers={"Authorization": f"Bearer {args.admin_key}"}, timeout=10)
    except httpx.HTTPError as exc:
        print(f"fleetserve status: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except Exception:
            msg = r.text
        print(f"fleetserve status: HTTP {r.status_code}: {msg}", file=sys.stderr)
        return 1
    if args.json:
        print(r.text)
    else:
        print(format_table(r.json()))
    return 0
