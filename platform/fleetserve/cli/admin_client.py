"""One authenticated call to the admin REST API, for the scaling commands (scale, drain, replicas)."""

from __future__ import annotations

from typing import Optional

from fleetserve.cli.errors import CLIError


def admin_call(method: str, url: str, path: str, admin_key: Optional[str], prefix: str, body: Optional[dict] = None,
               ok: tuple[int, ...] = (200, 202)) -> dict:
    """The decoded JSON answer; a CLIError naming the command on no key, no answer or an error status."""
    import httpx

    if not admin_key:
        raise CLIError("an admin key is required (--admin-key or $FLEETSERVE_ADMIN_KEY)", 2, prefix=prefix)
    try:
        r = httpx.request(method, url.rstrip("/") + path, json=body, timeout=30,
                          headers={"Authorization": f"Bearer {admin_key}"})
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach {url}: {exc}", prefix=prefix) from exc
    if r.status_code not in ok:
        try:
            msg = r.json()["error"]["message"]
        except Exception:  # noqa: BLE001 - not our error body
            msg = r.text
        raise CLIError(f"HTTP {r.status_code}: {msg}", prefix=prefix)
    return r.json()
