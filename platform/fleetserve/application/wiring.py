"""The Gatekeeper the ingress injects into its InferenceService, built from the config.

The tenants subpackage owns auth, quotas and admission; this only assembles its config:
the ``tenants`` section plus ``server.admin_key`` (hashed here, never stored in plaintext
by the gatekeeper).
"""

from __future__ import annotations

from typing import Optional

from fleetserve.config import FleetConfig
from fleetserve.tenants.context import Gatekeeper


def tenants_config(cfg: FleetConfig):
    from fleetserve.tenants.config import TenantsConfig
    from fleetserve.tenants.keys import hash_api_key

    tcfg = cfg.tenants if cfg.tenants is not None else TenantsConfig()
    if cfg.server.admin_key and tcfg.admin_key_hash is None:
        tcfg = tcfg.model_copy(update={"admin_key_hash": hash_api_key(cfg.server.admin_key)})
    return tcfg


def build_gatekeeper(cfg: FleetConfig, pool: Optional[object] = None, metrics_registry: Optional[object] = None,
                     handles: Optional[dict] = None, deployment_names: Optional[dict] = None) -> Gatekeeper:
    """``metrics_registry``: the ingress's Prometheus registry, so /metrics also shows the
    per-tenant metering and fleet-queue series. With ``deployment_names`` (and the model
    ``handles``, for preemption calls), ``tenants.scheduling.scope`` is honoured: 'cluster'
    (or 'auto' with several ingress replicas) shares one queue actor between them."""
    from fleetserve.tenants.gatekeeper import TenantGatekeeper

    tcfg = tenants_config(cfg)
    factory = None
    if deployment_names:
        from fleetserve.admission.cluster_queue import cluster_scheduler_factory, resolve_scope

        if resolve_scope(tcfg.scheduling, cfg.server.ingress_replicas) == "cluster":
            factory = cluster_scheduler_factory(cfg.server.app_name, tcfg.scheduling, deployment_names, handles)
    return TenantGatekeeper(tcfg, pool=pool, metrics_registry=metrics_registry, scheduler_factory=factory)
