"""``fleetserve versions list|add|remove MODEL``: model versions over the admin REST API."""

from __future__ import annotations

import json as jsonlib
from typing import Annotated

import typer

from fleetserve.cli.console import make_table, print_table
from fleetserve.cli.tenants import DEFAULT_URL, AdminKey, Json, Url, admin_request

app = typer.Typer(help="Model versions: list, register, remove (admin API).", no_args_is_help=True)

Model = Annotated[str, typer.Argument(help="Served model name (the alias clients send).")]
Version = Annotated[str, typer.Argument(help="Version id.")]


def version_rows(out: dict) -> list[tuple[str, ...]]:
    weights = out.get("weights", {})
    rows = []
    for v in out.get("versions", []):
        share = weights.get(v["version_id"])
        rows.append((v["version_id"], v["state"], v.get("deployment", "-"), "-" if share is None else f"{100 * share:.1f}%",
                     v["checksum"][:19], v["checkpoint"], v.get("blocked_reason") or v.get("message") or ""))
    return rows


@app.command("list")
def list_(model: Model, url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """List a model's versions with state, deployment, traffic share and checksum."""
    out = admin_request(url, admin_key, "GET", f"/admin/models/{model}/versions")
    if json:
        print(jsonlib.dumps(out, indent=2))
        return 0
    print_table(make_table(("version", "state", "deployment", "weight", "checksum", "checkpoint", "note"),
                           version_rows(out)))
    return 0


@app.command("add")
def add(model: Model, version: Version,
        checkpoint: Annotated[str, typer.Option(help="Checkpoint directory (checksummed now).")],
        deploy: Annotated[bool, typer.Option("--deploy/--no-deploy", help="Start its deployment now.")] = True,
        url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Register a version (computes its checksum) and, by default, deploy it without traffic."""
    out = admin_request(url, admin_key, "POST", f"/admin/models/{model}/versions",
                        json={"version_id": version, "checkpoint": checkpoint, "deploy": deploy})
    if json:
        print(jsonlib.dumps(out, indent=2))
    else:
        v = out["version"]
        print(f"registered {model}@{v['version_id']} ({v['checksum']})" + (", deploying" if deploy else ""))
    return 0


@app.command("remove")
def remove(model: Model, version: Version, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
           json: Json = False) -> int:
    """Remove a version that carries no traffic (its deployment is drained, then deleted)."""
    out = admin_request(url, admin_key, "DELETE", f"/admin/models/{model}/versions/{version}")
    print(jsonlib.dumps(out, indent=2) if json else f"removed {model}@{version}")
    return 0


