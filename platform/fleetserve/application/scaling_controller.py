"""The scaling controller as a detached Ray actor, and the ingress's client for it.

Why an actor and not a loop in Serve's policy hook: the hook runs inside Serve's controller
once per deployment, must return at once, and can only hand back a count. Applying a whole
decision means awaiting handle calls (wake, park, drain), watching drains finish and keeping
state across all deployments of a model version (its on-demand and spot twins). One named,
detached actor (``fleetserve-controller``, ``get_if_exists``) does that outside Serve's
control loop; every ingress replica reaches the same one. Its state goes to the store
(Redis when ``canary.redis_url`` or ``tenants.redis_url`` is set) after each tick and is
reloaded when the actor restarts (``max_restarts=-1``).

Which fleets: the configured (stable) versions, and each model version deployed at runtime
(:class:`~fleetserve.application.version_fleets.RegistryFleetCatalog`, read every tick,
with the registry's split weights, and Serve's application names), each its own Serve
application (:class:`~fleetserve.application.version_fleets.ServeVersionApps`) observed and
acted on like a stable one (warm pool, drains, migration; no spot twin). Serve's full status
is read only while such a version is planned.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from fleetserve.application.build import deployment_name, on_demand_resources, spot_twin_models, twin_deployment_name
from fleetserve.application.version_fleets import RegistryFleetCatalog, ServeVersionApps
from fleetserve.application.versions import ServeVersionDeployer, version_slug
from fleetserve.application.serve_fleet import DeploymentRef, RayNodeDrains, ServeFleetActuator, spot_nodes_alive
from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.control import LocalScalingControl
from fleetserve.autoscaler.controller import ScalingController
from fleetserve.autoscaler.controller_metrics import ControllerMetrics
from fleetserve.autoscaler.snapshot import CapacityType
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.store import MemoryCanaryStore, RedisCanaryStore
from fleetserve.clock import SystemClock
from fleetserve.config import FleetConfig

log = logging.getLogger(__name__)
ACTOR_NAME = "fleetserve-controller"


def fleet_deployments(cfg: FleetConfig) -> dict:
    """fleet key -> {capacity type: DeploymentRef}: the on-demand deployment and, where spot
    is enabled, its spot twin, both in the main application (``build.build_app``)."""
    out = {}
    twins = {m.name for m in spot_twin_models(cfg)}
    for m in cfg.models:
        refs = {CapacityType.ON_DEMAND: DeploymentRef(cfg.server.app_name, deployment_name(m))}
        if m.name in twins:
            refs[CapacityType.SPOT] = DeploymentRef(cfg.server.app_name, twin_deployment_name(m))
        out[FleetId(m.name, m.version).key] = refs
    return out


def version_apps(cfg: FleetConfig) -> ServeVersionApps:
    """Runtime versions' applications, named as :class:`ServeVersionDeployer` deploys them."""
    deployer = ServeVersionDeployer(cfg)
    return ServeVersionApps(lambda model: deployer.app_name(model, ""),
                            lambda model, v: (deployer.app_name(model, v), deployer.deployment(model, v)))


def version_catalog(cfg: FleetConfig, serve: ServeVersionApps) -> RegistryFleetCatalog:
    """The versions to plan: the registry the ingress's version table reads (the same store:
    Redis when ``canary.redis_url`` or ``tenants.redis_url`` is set; else an empty one of this
    process, and only what Serve runs is planned, without weights)."""
    url = cfg.canary.redis_url or (cfg.tenants.redis_url if cfg.tenants is not None else None)
    store = RedisCanaryStore.from_url(url) if url else MemoryCanaryStore()  # the registry's prefix, as build_versions
    return RegistryFleetCatalog({m.name: m.version for m in cfg.models}, VersionRegistry(store), serve, version_slug)


class ControllerActor:
    """Runs :class:`ScalingController` every ``autoscaler.tick_interval_s``."""

    def __init__(self, config: dict):
        from prometheus_client import CollectorRegistry

        self.cfg = FleetConfig.model_validate(config)
        url = self.cfg.canary.redis_url or (self.cfg.tenants.redis_url if self.cfg.tenants is not None else None)
        store = RedisCanaryStore.from_url(url, prefix="fleetserve:") if url else MemoryCanaryStore()
        fleets = fleet_deployments(self.cfg)
        versions = version_apps(self.cfg)
        self.registry = CollectorRegistry()
        drains = RayNodeDrains()
        placement = self.cfg.autoscaler.placement
        actuator = ServeFleetActuator(fleets, placement,
                                      spot_available=lambda: spot_nodes_alive(placement, drains.draining_nodes()),
                                      versions=versions)
        self.controller = ScalingController(
            self.cfg.autoscaler, [FleetId.parse(k) for k in fleets], actuator,
            SystemClock(), store, observer=ControllerMetrics(self.registry),
            drain_timeout_s=max(m.drain_timeout_s for m in self.cfg.models) + 5.0, node_drains=drains,
            catalog=version_catalog(self.cfg, versions))
        self.control = LocalScalingControl(self.controller, self.registry)
        self._task: Optional[asyncio.Task] = None

    async def start(self) -> bool:
        if self._task is None:
            await self.controller.load()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.controller.tick()
            except Exception:  # noqa: BLE001 - one bad tick must not stop scaling
                log.exception("scaling tick failed")
            await asyncio.sleep(self.cfg.autoscaler.tick_interval_s)

    async def status(self) -> dict:
        return await self.control.status()

    async def set_override(self, *args) -> dict:
        return await self.control.set_override(*args)

    async def metrics_text(self) -> bytes:
        return await self.control.metrics_text()


def start_controller(cfg: FleetConfig):
    """The controller actor (started once, found by name afterwards), running."""
    import ray

    actor = ray.remote(ControllerActor).options(name=ACTOR_NAME, namespace="serve", lifetime="detached",
                                                get_if_exists=True, num_cpus=0, resources=on_demand_resources(cfg),
                                                max_restarts=-1,
                                                max_task_retries=-1)
    handle = actor.remote(cfg.model_dump(mode="json"))
    ray.get(handle.start.remote())
    return handle


class ActorScalingControl:
    """The admin routes' :class:`ScalingControl`, served by the controller actor."""

    def __init__(self, actor):
        self._actor = actor

    async def status(self) -> dict:
        return await self._actor.status.remote()

    async def set_override(self, model, version, min_replicas, max_replicas, warm) -> dict:
        return await self._actor.set_override.remote(model, version, min_replicas, max_replicas, warm)

    async def metrics_text(self) -> bytes:
        return await self._actor.metrics_text.remote()

    def metrics_text_blocking(self, timeout_s: float = 10.0) -> bytes:
        """``metrics_text`` for the metrics listener's threads (``/metrics/scaling``)."""
        import ray

        return ray.get(self._actor.metrics_text.remote(), timeout=timeout_s)
