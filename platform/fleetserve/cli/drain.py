"""``fleetserve drain REPLICA | --node NODE [--resume]``: stop a replica (or every replica on a
Ray node) taking new requests; those in flight finish (``POST /admin/replicas/{id}/drain``,
``POST /admin/nodes/{node}/drain``)."""

from __future__ import annotations

import json as jsonlib
from typing import Optional

import typer

from fleetserve.cli.admin_client import admin_call
from fleetserve.cli.errors import CLIError
from fleetserve.cli.tenants import AdminKey, Json, Url

DEFAULT_URL = "http://127.0.0.1:8000"
PREFIX = "fleetserve drain: "


def format_drain(answer: dict) -> str:
    rows = answer.get("replicas", [answer])
    return "\n".join(f"{r['replica']}: {'draining' if r['draining'] else 'admitting'}"
                     f"{'' if r['applied'] else ' (not reached)'}, {r['in_flight']} in flight" for r in rows) or "no replica"


def drain(
    replica: Optional[str] = typer.Argument(None, help="Replica id (see `fleetserve replicas`)."),
    node: Optional[str] = typer.Option(None, "--node", help="Drain every replica on this Ray node (id or IP)."),
    resume: bool = typer.Option(False, "--resume", help="Let a drained replica take requests again."),
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    json: Json = False,
) -> int:
    """Drain a replica or a node."""
    if (replica is None) == (node is None):
        raise CLIError("give a REPLICA or --node NODE (one of them)", 2, prefix=PREFIX)
    if node is not None and resume:
        raise CLIError("--resume takes a REPLICA", 2, prefix=PREFIX)
    path = f"/admin/nodes/{node}/drain" if node else f"/admin/replicas/{replica}/{'resume' if resume else 'drain'}"
    answer = admin_call("POST", url, path, admin_key, PREFIX, body={"source": "cli"} if node else None)
    print(jsonlib.dumps(answer) if json else format_drain(answer))
    return 0
