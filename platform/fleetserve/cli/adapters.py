"""``fleetserve adapters add|list|remove``: LoRA adapters over the admin REST API.

``add`` registers a PEFT adapter directory under a base model and loads it on every replica
of that model (a replica that cannot load it makes the whole add fail); clients then call
it as ``<model>:<id>`` or by an ``--alias``. Which tenants may call it is the tenants'
``allowed_adapters`` (``fleetserve tenants``). Same ``--url`` / ``--admin-key`` as ``tenants``.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from fleetserve.cli.console import make_table, print_table
from fleetserve.cli.tenants import DEFAULT_URL, AdminKey, Json, Url, _print_json, admin_request

app = typer.Typer(help="Manage LoRA adapters (admin API).", no_args_is_help=True)


@app.command("add")
def add(model: Annotated[str, typer.Argument(help="Base model name.")],
        id: Annotated[str, typer.Argument(help="Adapter id (clients call it '<model>:<id>').")],
        path: Annotated[str, typer.Argument(help="PEFT adapter directory, readable on every replica's node.")],
        alias: Annotated[Optional[list[str]], typer.Option(help="Another model name for it (repeatable).")] = None,
        url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Add an adapter and load it on every replica of its model."""
    body = {"model": model, "id": id, "path": path, "aliases": list(alias or [])}
    out = admin_request(url, admin_key, "POST", "/admin/adapters", json=body)
    if json:
        _print_json(out)
    else:
        a = out["adapter"]
        loaded = sum(1 for r in out["replicas"] if r.get("applied"))
        print(f"added {a['name']} (revision {a['revision']}), loaded on {loaded} replica(s)")
    return 0


@app.command("list")
def list_(model: Annotated[Optional[str], typer.Option(help="Only this base model's adapters.")] = None,
          url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """List adapters."""
    out = admin_request(url, admin_key, "GET", "/admin/adapters", params={"model": model} if model else None)
    if json:
        _print_json(out)
    else:
        rows = [(a["name"], a["model"], ",".join(a["aliases"]) or "-", a["revision"], a["path"]) for a in out["adapters"]]
        print_table(make_table(("name", "model", "aliases", "revision", "path"), rows))
    return 0


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="Adapter name ('<model>:<id>') or alias.")],
           url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Remove an adapter from the catalog and evict it on every replica (refused while in use)."""
    out = admin_request(url, admin_key, "DELETE", f"/admin/adapters/{name}")
    if json:
        _print_json(out)
    else:
        print(f"removed {out['deleted']}")
    return 0
