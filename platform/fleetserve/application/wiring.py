"""Assembling the ingress's request-path objects from the config.

- :func:`tenants_config`: the ``tenants`` section plus ``server.admin_key`` (hashed here,
  never stored in plaintext by the gatekeeper);
- :func:`cluster_config`: the config without the plaintext admin key, as it is shipped;
- :func:`build_gatekeeper`: the tenants' stages (authenticate, quota, account);
- :func:`build_versions`: stage 3's cached view of the version registry;
- :func:`build_adapters`: the LoRA adapter catalog, shared by the ingress replicas;
- :func:`build_ab`: the A/B records (per-variant counters, feedback ids, drift, prediction log);
- :func:`build_admission`: the fleet admission queues, with ``tenants.scheduling.scope``
  honoured: 'cluster' (or 'auto' with several ingress replicas) shares one queue actor
  between the ingress replicas.
"""

from __future__ import annotations

from typing import Mapping, Optional

from prometheus_client import CollectorRegistry

from fleetserve.admission.board_pool import board_pools

from fleetserve.admission.metrics import admission_metrics
from fleetserve.admission.cluster_queue import cluster_scheduler_factory, resolve_scope
from fleetserve.admission.queues import AdmissionQueues
from fleetserve.api.adapters import AdapterCatalog
from fleetserve.canary.ab_recorder import ABRecorder
from fleetserve.canary.ab_store import MemoryABStore, RedisABStore
from fleetserve.canary.drift_monitor import DriftMonitor
from fleetserve.canary.prediction_log import PredictionLogger
from fleetserve.canary.executor import RolloutExecutor
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.rollout_metrics import RolloutMetrics
from fleetserve.canary.rollout_store import RolloutStore
from fleetserve.canary.runner import RolloutRunner
from fleetserve.canary.serving import VersionTable
from fleetserve.canary.store import MemoryCanaryStore, RedisCanaryStore
from fleetserve.clock import WallClock
from fleetserve.config import FleetConfig
from fleetserve.application.build import engine_batch_size
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.router.stats_board import ReplicaStatsBoard
from fleetserve.tenants.config import TenantsConfig
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from fleetserve.tenants.keys import hash_api_key


def tenants_config(cfg: FleetConfig) -> TenantsConfig:
    """The ``tenants`` section as the ingress uses it: the admin key hashed, and the fleet
    queue's slots per replica resolved per model from the engines' batch sizes when
    ``scheduling.max_inflight_per_replica`` is unset."""
    tcfg = cfg.tenants if cfg.tenants is not None else TenantsConfig()
    if cfg.server.admin_key and tcfg.admin_key_hash is None:
        tcfg = tcfg.model_copy(update={"admin_key_hash": hash_api_key(cfg.server.admin_key)})
    sched = tcfg.scheduling.with_engine_batch_sizes({m.name: engine_batch_size(m) for m in cfg.models})
    if sched is not tcfg.scheduling:
        tcfg = tcfg.model_copy(update={"scheduling": sched})
    return tcfg


def cluster_config(cfg: FleetConfig) -> FleetConfig:
    """``cfg`` as it may leave this process: ``server.admin_key`` replaced by its hash in
    ``tenants.admin_key_hash``. What :func:`fleetserve.application.build.build_app` binds is
    stored in Ray's control store (GCS) and shipped to every ingress replica, so the
    plaintext key must never be part of it; the gatekeeper compares hashes in constant time."""
    if cfg.server.admin_key is None:
        return cfg
    server = cfg.server.model_copy(update={"admin_key": None})
    return cfg.model_copy(update={"server": server, "tenants": tenants_config(cfg)})


def build_gatekeeper(cfg: FleetConfig, metrics_registry: Optional[object] = None) -> TenantGatekeeper:
    """``metrics_registry``: the ingress's Prometheus registry, so /metrics also shows the
    per-tenant metering and fleet-queue series."""
    return TenantGatekeeper(tenants_config(cfg), metrics_registry=metrics_registry)


def build_admission(cfg: FleetConfig, metrics_registry: CollectorRegistry, deployment_names: Mapping[str, str],
                    handles: Optional[Mapping[str, object]] = None,
                    twins: Optional[Mapping[str, str]] = None,
                    board: Optional[ReplicaStatsBoard] = None) -> AdmissionQueues:
    """Fleet admission queue per model: capacity from the replica stats ``board`` (default:
    this process's) over the model's deployment plus its spot twin in ``twins`` (the router
    sends requests to both; the cluster queue actor gets both pushed), preemption through the
    model ``handles``, metrics in ``metrics_registry``."""
    sched = tenants_config(cfg).scheduling
    factory = None
    if resolve_scope(sched, cfg.server.ingress_replicas) == "cluster":
        factory = cluster_scheduler_factory(cfg.server.app_name, sched, deployment_names, handles, twins=twins)
    return AdmissionQueues(sched, board_pools(deployment_names, handles, board, twins=twins),
                           observer_for=admission_metrics(metrics_registry).observer, scheduler_factory=factory)


def canary_redis_url(cfg: FleetConfig) -> Optional[str]:
    return cfg.canary.redis_url or (cfg.tenants.redis_url if cfg.tenants is not None else None)


def build_ab(cfg: FleetConfig, metrics: FleetMetrics) -> ABRecorder:
    """Per-variant A/B state in the same store as the version registry; drift gauges and the
    feedback and prediction-log counters in the ingress's ``metrics``."""
    c, url = cfg.canary, canary_redis_url(cfg)
    store = RedisABStore.from_url(url) if url else MemoryABStore(c.feedback.max_records_in_memory)
    psi = metrics.get(N.DRIFT_PSI)
    drift = DriftMonitor(c.drift_monitor, sink=lambda m, v, f, x: psi.labels(m, v, f).set(x))
    return ABRecorder(store, metrics=metrics, feedback=c.feedback, ab=c.ab, drift=drift,
                      predictions=PredictionLogger.from_config(c.prediction_log, url))


def build_versions(cfg: FleetConfig) -> VersionTable:
    """The version registry (Redis when ``canary.redis_url`` or ``tenants.redis_url`` is set,
    else in-process) behind stage 3's cache; each model's configured version is its stable one."""
    url = canary_redis_url(cfg)
    store = RedisCanaryStore.from_url(url) if url else MemoryCanaryStore()
    return VersionTable({m.name: m.version for m in cfg.models}, VersionRegistry(store),
                        refresh_s=cfg.canary.registry_refresh_s, pin_header=cfg.canary.pin_header)


def build_adapters(cfg: FleetConfig) -> AdapterCatalog:
    """The adapter catalog in the store the registries use (Redis when ``canary.redis_url``
    or ``tenants.redis_url`` is set, keys under the tenants' prefix; else in process),
    seeded with the config's adapters, reloaded every ``canary.registry_refresh_s``."""
    url = canary_redis_url(cfg)
    prefix = cfg.tenants.redis_key_prefix if cfg.tenants is not None else "fleetserve:"
    store = RedisCanaryStore.from_url(url, prefix=prefix) if url else MemoryCanaryStore()
    return AdapterCatalog.from_config(cfg.models, store, refresh_s=cfg.canary.registry_refresh_s)


def build_rollouts(cfg: FleetConfig, table: VersionTable, deployer, prober, metrics_registry: CollectorRegistry,
                   ab: ABRecorder) -> tuple[Optional[RolloutExecutor], Optional[RolloutRunner]]:
    """The rollout executor and its loop over the version table's store, its step windows cut
    from ``ab``'s per-variant counters; (None, None) when ``canary.enabled`` is false (the
    rollout routes then answer 409)."""
    if not cfg.canary.enabled or table.registry is None:
        return None, None
    rollouts = RolloutStore(table.registry.store)
    executor = RolloutExecutor(cfg.canary, table.registry, rollouts, deployer, prober, ab,
                               {m.name: m.version for m in cfg.models}, WallClock(), RolloutMetrics(metrics_registry),
                               on_change=table.invalidate)
    return executor, RolloutRunner(executor, rollouts, cfg.canary.tick_s, cfg.canary.lease_s)


def warm_pool_rows(versions: dict[str, str], replicas) -> list[tuple[str, str, int]]:
    """``(model, version, standby replicas)`` for the warm-pool gauge, from the replica stats
    the ingress routes on (``versions``: each model's configured version; a model without a
    standby gets a 0 row, so the series exists before the first one parks; a runtime
    version's replicas, routed as ``model@version``, count under their own version)."""
    from fleetserve.api.scaling_routes import model_version

    counts = {(m, v): 0 for m, v in versions.items()}
    for r in list(replicas):
        key = model_version(r.model, versions)
        if r.standby and key[0] in versions:
            counts[key] = counts.get(key, 0) + 1
    return [(m, v, n) for (m, v), n in counts.items()]
