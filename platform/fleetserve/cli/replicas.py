"""``fleetserve replicas``: every replica with its state (serving, standby, draining,
unhealthy), version, node, spot/on-demand and load (``GET /admin/replicas``)."""

from __future__ import annotations

import json as jsonlib

from fleetserve.cli.admin_client import admin_call
from fleetserve.cli.console import make_table, print_table, render_plain
from fleetserve.cli.tenants import AdminKey, Json, Url

DEFAULT_URL = "http://127.0.0.1:8000"
HEADER = ("REPLICA", "MODEL", "VERSION", "STATE", "NODE", "CAPACITY", "RUNNING", "WAITING", "KV USAGE")


def rows(answer: dict) -> list[tuple[str, ...]]:
    return [(r["replica"], r["model"], r.get("version") or "-", r["state"], (r.get("node_id") or "-")[:12],
             r.get("capacity_type") or "-", str(r["running"]), str(r["waiting"]), f"{100 * r['kv_usage']:.1f}%")
            for r in answer.get("replicas", [])]


def format_table(answer: dict) -> str:
    return render_plain(make_table(HEADER, rows(answer)))


def replicas(url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """List replicas: state, version, node, spot/on-demand, load."""
    answer = admin_call("GET", url, "/admin/replicas", admin_key, "fleetserve replicas: ")
    if json:
        print(jsonlib.dumps(answer))
    else:
        print_table(make_table(HEADER, rows(answer)))
    return 0
