"""The Serve application a KubeRay RayService runs: ``import_path: fleetserve.kube.serve_app:build``.

The chart writes the ``fleet`` values (a :class:`~fleetserve.config.FleetConfig` without its
secret fields) into the RayService's ``serveConfigV2`` as the application's ``args.config``.
Secrets never pass through the custom resource: the Ray pods get them from Kubernetes
Secrets as environment variables and a mounted directory, and :func:`resolve_config` puts
them back where the config expects them before the application is built.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from fleetserve.config import FleetConfig, parse_config
from fleetserve.errors import ConfigError
from fleetserve.exposure import admin_key_problem, is_loopback, refusal
from fleetserve.tenants.keys import hash_api_key

ADMIN_KEY_ENV = "FLEETSERVE_ADMIN_KEY"  # the name `fleetserve tenants` reads too
REDIS_URL_ENV = "FLEETSERVE_REDIS_URL"
TENANT_KEYS_DIR_ENV = "FLEETSERVE_TENANT_KEYS_DIR"
METRICS_TOKEN_ENV = "FLEETSERVE_METRICS_TOKEN"  # the scrape token Prometheus presents (chart: a Secret)


def read_key_hashes(directory: Path) -> dict[str, list[str]]:
    """Tenant id -> key hashes from a mounted Secret: one file per tenant, hashes one per line
    or comma-separated. Kubernetes' own ``..data`` entries are skipped."""
    hashes: dict[str, list[str]] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        text = path.read_text().replace(",", "\n")
        hashes[path.name] = [h.strip() for h in text.splitlines() if h.strip()]
    return hashes


def resolve_config(data: Mapping[str, Any], environ: Mapping[str, str]) -> FleetConfig:
    """The chart's config plus the secrets found in ``environ``; raises ConfigError naming the field."""
    cfg = copy.deepcopy(dict(data))
    admin_key = environ.get(ADMIN_KEY_ENV)
    redis_url = environ.get(REDIS_URL_ENV)
    keys_dir = environ.get(TENANT_KEYS_DIR_ENV)
    if admin_key or redis_url or keys_dir:
        tenants = cfg.get("tenants") or {}
        cfg["tenants"] = tenants
        if admin_key:
            _refuse_weak_admin_key(admin_key, parse_config(cfg).server.admin_listen_host)
            # Only the hash enters the config: it is shipped to the Serve controller and every ingress.
            tenants["admin_key_hash"] = hash_api_key(admin_key)
        if redis_url:
            tenants["redis_url"] = redis_url
        if keys_dir and Path(keys_dir).is_dir():
            _apply_key_hashes(tenants, read_key_hashes(Path(keys_dir)))
    metrics_token = environ.get(METRICS_TOKEN_ENV)
    if metrics_token:
        cfg["metrics"] = {**(cfg.get("metrics") or {}), "scrape_token_hash": hash_api_key(metrics_token)}
    return parse_config(cfg)


def _refuse_weak_admin_key(admin_key: Optional[str], host: str) -> None:
    """The same rule as ``server.admin_key`` in a file: a weak key only on loopback."""
    problem = admin_key_problem(admin_key) if admin_key else None
    if problem and not is_loopback(host):
        raise ConfigError(refusal(problem, host, ADMIN_KEY_ENV), field="server.admin_key")


def _apply_key_hashes(tenants: dict, hashes: dict[str, list[str]]) -> None:
    specs = {t.get("id"): t for t in tenants.get("tenants", [])}
    unknown = sorted(set(hashes) - set(specs))
    if unknown:
        # A key for a tenant the values do not define is a typo or a stale Secret: refuse it
        # rather than serve a tenant without its tier and quotas.
        raise ConfigError(f"tenant key hashes given for undefined tenant(s) {unknown}", field="tenants.tenants")
    for tenant_id, tenant_hashes in hashes.items():
        specs[tenant_id]["api_key_hashes"] = tenant_hashes


def build(args: dict, environ: Optional[Mapping[str, str]] = None):
    """Serve application builder (RayService ``import_path``): ``args = {"config": {...}}``."""
    from fleetserve.application.build import build_app

    if "config" not in args:
        raise ConfigError("the application's args must hold 'config' (the fleet values)", field="args.config")
    return build_app(resolve_config(args["config"], os.environ if environ is None else environ))
