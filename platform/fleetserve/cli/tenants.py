"""``fleetserve tenants add|list|set-quota|rotate-key|remove``: tenant management over the admin REST API.

Talks to a running fleetserve (``--url``) with the admin key (``--admin-key`` or the
``FLEETSERVE_ADMIN_KEY`` environment variable). New API keys are printed once, on stdout.
"""

from __future__ import annotations

import json as jsonlib
import os
from typing import Annotated, Optional

import typer

from fleetserve.cli.console import make_table, print_table
from fleetserve.cli.errors import CLIError

DEFAULT_URL = "http://127.0.0.1:8000"

app = typer.Typer(help="Manage tenants (admin API).", no_args_is_help=True)

# The connection options every admin command takes (`usage` too).
Url = Annotated[str, typer.Option(envvar="FLEETSERVE_URL", help="fleetserve REST address.")]
AdminKey = Annotated[Optional[str], typer.Option(envvar="FLEETSERVE_ADMIN_KEY", help="Admin key.")]
Json = Annotated[bool, typer.Option("--json", help="Print raw JSON.")]
TenantId = Annotated[str, typer.Argument(help="Tenant id.")]

# Quota flags, shared by `add` and `set-quota`; QUOTA_FIELDS maps each to its quota field.
Rpm = Annotated[Optional[int], typer.Option(help="Requests per minute.")]
Tpm = Annotated[Optional[int], typer.Option(help="Tokens (prompt + max_tokens) per minute.")]
MaxConcurrent = Annotated[Optional[int], typer.Option(help="Requests in flight at once.")]
MaxContext = Annotated[Optional[int], typer.Option(help="Largest prompt + max_tokens of one request.")]
MaxTokens = Annotated[Optional[int], typer.Option(help="Largest max_tokens of one request.")]
QUOTA_FIELDS = {
    "rpm": "requests_per_min",
    "tpm": "tokens_per_min",
    "max_concurrent": "max_concurrent",
    "max_context": "max_context",
    "max_tokens": "max_tokens_per_request",
}


class AdminAPIError(CLIError):
    """The admin API answered with an error (message is the server's, OpenAI-shaped), or
    could not be reached. Exit code 1."""


def admin_request(url: str, admin_key: Optional[str], method: str, path: str, **kwargs) -> dict:
    """One admin API call; raises AdminAPIError with the server's message on 4xx/5xx."""
    import httpx  # lazily: `fleetserve --help` stays fast

    key = admin_key or os.environ.get("FLEETSERVE_ADMIN_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=10.0) as client:
            resp = client.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        raise AdminAPIError(f"cannot reach {url}: {e}") from e
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code >= 400:
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else None
        raise AdminAPIError(f"HTTP {resp.status_code}: {msg or resp.text[:200]}")
    return body


def _quotas(**flags: Optional[int]) -> dict:
    return {QUOTA_FIELDS[flag]: v for flag, v in flags.items() if v is not None}


def _print_json(out: dict) -> None:
    print(jsonlib.dumps(out, indent=2))


def _print_tenant_table(tenants: list[dict]) -> None:
    rows = []
    for t in tenants:
        q = t.get("quotas", {})
        models = ",".join(t["allowed_models"]) if t.get("allowed_models") is not None else "*"
        rows.append((t["id"], t["tier"], f"{t['weight']:g}", models, _q(q, "requests_per_min"), _q(q, "tokens_per_min"),
                     _q(q, "max_concurrent"), str(t.get("num_keys", 0))))
    print_table(make_table(("id", "tier", "weight", "models", "rpm", "tpm", "concurrent", "keys"), rows))


def _q(q: dict, name: str) -> str:
    v: Optional[int] = q.get(name)
    return "-" if v is None else str(v)


@app.command("add")
def add(id: TenantId, tier: Annotated[str, typer.Option(help="Tier.")] = "standard",
        weight: Annotated[float, typer.Option(help="Fair-share weight within its class.")] = 1.0,
        models: Annotated[Optional[str], typer.Option(help="Comma-separated allowed models (default: all).")] = None,
        adapters: Annotated[Optional[str], typer.Option(help="Comma-separated allowed LoRA adapters, '<model>:<id>' "
                                                              "(default: all; '' for none).")] = None,
        rpm: Rpm = None, tpm: Tpm = None, max_concurrent: MaxConcurrent = None, max_context: MaxContext = None,
        max_tokens: MaxTokens = None, url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Create a tenant and print its API key (once)."""
    quotas = _quotas(rpm=rpm, tpm=tpm, max_concurrent=max_concurrent, max_context=max_context, max_tokens=max_tokens)
    body = {"id": id, "tier": tier, "weight": weight, "quotas": quotas}
    if models:
        body["allowed_models"] = [m.strip() for m in models.split(",") if m.strip()]
    if adapters is not None:
        body["allowed_adapters"] = [a.strip() for a in adapters.split(",") if a.strip()]
    out = admin_request(url, admin_key, "POST", "/admin/tenants", json=body)
    if json:
        _print_json(out)
    else:
        print(f"created tenant {out['tenant']['id']} ({out['tenant']['tier']})")
        print(f"API key (shown once): {out['api_key']}")
    return 0


@app.command("list")
def list_(url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """List tenants."""
    out = admin_request(url, admin_key, "GET", "/admin/tenants")
    if json:
        _print_json(out)
    else:
        _print_tenant_table(out["tenants"])
    return 0


@app.command("set-quota")
def set_quota(id: TenantId, tier: Annotated[Optional[str], typer.Option(help="New tier.")] = None,
              weight: Annotated[Optional[float], typer.Option(help="New weight.")] = None,
              rpm: Rpm = None, tpm: Tpm = None, max_concurrent: MaxConcurrent = None, max_context: MaxContext = None,
              max_tokens: MaxTokens = None, url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Change quotas (and optionally tier/weight) of a tenant."""
    body: dict = {"quotas": _quotas(rpm=rpm, tpm=tpm, max_concurrent=max_concurrent, max_context=max_context,
                                    max_tokens=max_tokens)}
    if tier is not None:
        body["tier"] = tier
    if weight is not None:
        body["weight"] = weight
    out = admin_request(url, admin_key, "PATCH", f"/admin/tenants/{id}", json=body)
    if json:
        _print_json(out)
    else:
        _print_tenant_table([out["tenant"]])
    return 0


@app.command("rotate-key")
def rotate_key(id: TenantId,
               keep_old: Annotated[bool, typer.Option("--keep-old", help="Keep old keys valid (grace period); "
                                                      "remove them with another rotate.")] = False,
               url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Issue a new API key and print it (once)."""
    out = admin_request(url, admin_key, "POST", f"/admin/tenants/{id}/rotate-key", params={"keep_old": str(keep_old).lower()})
    if json:
        _print_json(out)
    else:
        print(f"new API key for {id} (shown once): {out['api_key']}")
        print("old keys remain valid" if keep_old else "old keys no longer work")
    return 0


@app.command("remove")
def remove(id: TenantId, url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Delete a tenant."""
    admin_request(url, admin_key, "DELETE", f"/admin/tenants/{id}")
    print(f"removed tenant {id}")
    return 0
