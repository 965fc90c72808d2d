"""``fleetserve scale MODEL [--version V] --min N --max N --warm N``: override a model version's
replica bounds and warm-pool size (``POST /admin/scaling/{model}``); the scaling controller
applies them on its next tick."""

from __future__ import annotations

import json as jsonlib
from typing import Optional

import typer

from fleetserve.cli.admin_client import admin_call
from fleetserve.cli.tenants import AdminKey, Json, Url

DEFAULT_URL = "http://127.0.0.1:8000"


def format_scale(answer: dict) -> str:
    o = answer.get("override", {})
    bounds = ", ".join(f"{k}={v}" for k, v in sorted(o.items())) or "profile defaults"
    return (f"{answer.get('fleet')}: {bounds}; serving {len(answer.get('serving', []))}, "
            f"standby {len(answer.get('standby', []))}, draining {len(answer.get('draining', {}))}")


def scale(
    model: str = typer.Argument(help="Model name."),
    version: Optional[str] = typer.Option(None, help="Model version (default: the stable one)."),
    min_replicas: Optional[int] = typer.Option(None, "--min", min=0, help="Fewest serving replicas."),
    max_replicas: Optional[int] = typer.Option(None, "--max", min=1, help="Most serving replicas."),
    warm: Optional[int] = typer.Option(None, "--warm", min=0, help="Warm standbys to keep."),
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    json: Json = False,
) -> int:
    """Set replica bounds and the warm pool of a model version."""
    body = {k: v for k, v in (("version", version), ("min_replicas", min_replicas), ("max_replicas", max_replicas),
                              ("warm", warm)) if v is not None}
    answer = admin_call("POST", url, f"/admin/scaling/{model}", admin_key, "fleetserve scale: ", body)
    print(jsonlib.dumps(answer) if json else format_scale(answer))
    return 0
