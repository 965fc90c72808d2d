"""``fleetserve status [--url URL] [--admin-key KEY]``: models, replicas, queue depth and KV
usage per replica, from the authenticated admin API (``GET /admin/status``)."""

from __future__ import annotations

import json as jsonlib
from typing import Optional

import typer
from rich.table import Table

from fleetserve.cli.console import make_table, print_table, render_plain, stdout_console
from fleetserve.cli.errors import CLIError

DEFAULT_URL = "http://127.0.0.1:8000"
HEADER = ("MODEL", "VERSION", "REPLICA", "WAITING", "RUNNING", "KV USAGE", "STATE", "STATS AGE")


def _rows(status: dict) -> list[tuple[str, ...]]:
    rows = []
    for m in status.get("models", []):
        if not m.get("replicas"):
            rows.append((m["name"], m.get("version", ""), "-", "-", "-", "-", "no replica", "-"))
        for r in m.get("replicas", []):
            state = "draining" if r.get("draining") else ("healthy" if r.get("healthy", True) else "unhealthy")
            state = "standby" if r.get("standby") and r.get("healthy", True) else state
            age = r.get("stats_age_s")
            rows.append((m["name"], m.get("version", ""), r["replica"], str(r["waiting"]), str(r["running"]),
                         f"{100 * r['kv_usage']:.1f}%", state, "-" if age is None else f"{age:.1f}s"))
    return rows


def build_table(status: dict) -> Table:
    return make_table(HEADER, _rows(status))


def summary(status: dict) -> str:
    total = sum(len(m.get("replicas", [])) for m in status.get("models", []))
    return f"{len(status.get('models', []))} model(s), {total} replica(s)"


def scaling_lines(scaling: dict) -> list[str]:
    """One line per model version from ``GET /admin/scaling``: the controller's last decision."""
    out = []
    for key, f in sorted(scaling.get("fleets", {}).items()):
        d = f.get("last_decision", {})
        notes = "; ".join(d.get("notes", [])) or "steady"
        out.append(f"scaling {key}: target {d.get('target', '-')}, serving {len(f.get('serving', []))}, "
                   f"standby {len(f.get('standby', []))}, draining {len(f.get('draining', {}))}, "
                   f"starting {len(f.get('pending', []))} ({notes})")
    return out


def _scaling(url: str, admin_key: str) -> dict:
    """The controller's view, or {} where none runs (404) or it cannot be read."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/admin/scaling", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
    except httpx.HTTPError:
        return {}
    return r.json() if r.status_code == 200 else {}


def format_table(status: dict) -> str:
    """The table as plain text, then the summary line."""
    return render_plain(build_table(status)) + "\n" + summary(status)


def status(
    url: str = typer.Option(DEFAULT_URL, envvar="FLEETSERVE_URL", help="Base URL."),
    admin_key: Optional[str] = typer.Option(None, envvar="FLEETSERVE_ADMIN_KEY", help="Admin key."),
    json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> int:
    """Show models, replicas, queue depth and KV usage."""
    import httpx

    if not admin_key:
        raise CLIError("an admin key is required (--admin-key or $FLEETSERVE_ADMIN_KEY)", 2, prefix="fleetserve status: ")
    try:
        r = httpx.get(url.rstrip("/") + "/admin/status", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach {url}: {exc}", prefix="fleetserve status: ") from exc
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except Exception:
            msg = r.text
        raise CLIError(f"HTTP {r.status_code}: {msg}", prefix="fleetserve status: ")
    scaling = _scaling(url, admin_key)
    if json:
        print(jsonlib.dumps({**r.json(), "scaling": scaling}) if scaling else r.text)
    else:
        print_table(build_table(r.json()))
        stdout_console().print(summary(r.json()))
        for line in scaling_lines(scaling):
            stdout_console().print(line)
    return 0
