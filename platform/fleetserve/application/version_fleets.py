"""Runtime model versions as fleets of the scaling controller: which ones to plan, with what
traffic weight, and what Serve tells of their replicas.

A version deployed at runtime (a canary, or a promoted one) is its own Serve application
(:class:`~fleetserve.application.versions.ServeVersionDeployer`) on Serve's default router,
so its replicas never publish to the replica stats board the stable versions are observed
through, and pinned calls (park, wake, drain one replica) cannot reach them. What the
controller gets for them instead:

- *Which exist*: the application names of Serve's deployments (``list_deployment_ids``, a
  small call), read every tick. Serve's full status (``get_serve_instance_details``, which
  the Serve controller builds for every application, deployment and replica) is read only
  while some runtime version is planned: with none (the common case) the controller never
  asks for it.
- *Replicas*: Serve's own view (``get_serve_instance_details``, Ray 2.60): each RUNNING
  replica's id and node, all serving (no warm standby, no drain of our own).
- *Load*: the deployment's running and queued requests as Serve's autoscaler sees them,
  published by the policy hook (``ray_adapter.controller_target``) to Ray's GCS KV. Per
  replica it is unknown: the total is spread evenly over the running replicas.
- *Count*: the same GCS KV count as the stable deployments (the hook carries it out).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable, Dict, Generic, Iterable, List, Mapping, Optional, Protocol, Tuple, TypeVar

from fleetserve.autoscaler.actuator import FleetId, ObservedReplica
from fleetserve.autoscaler.ray_adapter import TARGET_NAMESPACE, load_key
from fleetserve.autoscaler.snapshot import CapacityType, ReplicaState
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.serving import NOT_SERVABLE

ServeDetails = Callable[[], dict]  # Serve's instance details, as ``get_serve_details()`` returns them
ServeAppNames = Callable[[], Iterable[str]]  # the applications Serve runs, by name
T = TypeVar("T")


class DeployedVersions(Protocol):
    async def deployed(self, model: str) -> Dict[str, str]:
        """The model's runtime version applications now in Serve: app name -> version as named there."""
        ...


class RegistryFleetCatalog:
    """The :class:`~fleetserve.autoscaler.version_split.FleetCatalog` of the running controller.

    Per configured model: its stable (configured) version always, plus every registered
    version that may take traffic (not blocked, retired or rolled back) and has a Serve
    application, plus any version application Serve runs that the registry does not know
    (with an in-process registry the controller cannot read the ingress's; it still plans
    what Serve runs, by its own load). Weights: the registry's split (0 for a planned
    version it leaves out) or None for every version of a model without a split.
    """

    def __init__(self, stable: Mapping[str, str], registry: VersionRegistry, serve: DeployedVersions,
                 name_of: Callable[[str], str]):
        """``name_of``: a version id as Serve's application names spell it (``versions._slug``)."""
        self._stable = dict(stable)
        self._registry = registry
        self._serve = serve
        self._name_of = name_of

    async def fleets(self) -> Dict[FleetId, Optional[float]]:
        out: Dict[FleetId, Optional[float]] = {}
        for model, stable in self._stable.items():
            weights = await self._registry.weights(model)
            running = set((await self._serve.deployed(model)).values())
            planned = {stable}
            for v in await self._registry.versions(model):
                name = self._name_of(v.version_id)
                if v.state not in NOT_SERVABLE and name in running:
                    planned.add(v.version_id)
                running.discard(name)  # known: planned by its registry state, not as a stranger
            planned |= running  # in Serve, unknown to the registry this process reads
            for version in sorted(planned):
                out[FleetId(model, version)] = weights.get(version, 0.0) if weights else None
        return out


class _TickRead(Generic[T]):
    """One blocking read (run in a thread) that serves every fleet of a tick: read again once
    older than ``max_age_s``."""

    def __init__(self, read: Callable[[], T], clock: Callable[[], float], max_age_s: float):
        self._read, self._clock, self._max_age_s = read, clock, max_age_s
        self._cached: Optional[Tuple[float, T]] = None

    async def get(self) -> T:
        now = self._clock()
        if self._cached is None or now - self._cached[0] > self._max_age_s:
            self._cached = (now, await asyncio.to_thread(self._read))
        return self._cached[1]


class ServeVersionReplicas:
    """Runtime versions' replicas and load from Serve, for :class:`ServeFleetActuator`.

    ``app_names``: the applications Serve runs (default: the Serve controller's deployment
    ids); ``details``: Serve's instance details (default: the Serve client's), read only for
    a version's replicas; ``load_of``: the published load of one (app, deployment) (default:
    Ray's GCS KV). Each Serve read runs in a thread and serves every fleet of a tick
    (cached ``max_age_s``)."""

    def __init__(self, app_prefix: Callable[[str], str], deployment_of: Callable[[str, str], Tuple[str, str]],
                 details: Optional[ServeDetails] = None, load_of: Optional[Callable[[str, str], dict]] = None,
                 clock: Callable[[], float] = time.monotonic, max_age_s: float = 1.0,
                 app_names: Optional[ServeAppNames] = None):
        """``app_prefix(model)``: what every version application of the model is named
        ``<prefix><version>``; ``deployment_of(model, version)``: its (app, deployment)."""
        self._app_prefix = app_prefix
        self._deployment_of = deployment_of
        details = details or _serve_details
        self._details = _TickRead(lambda: details().get("applications") or {}, clock, max_age_s)
        names = app_names or _serve_app_names
        self._names = _TickRead(lambda: frozenset(names()), clock, max_age_s)
        self._load_of = load_of or _published_load

    def ref(self, fleet: FleetId) -> Tuple[str, str]:
        return self._deployment_of(fleet.model, fleet.version)

    async def deployed(self, model: str) -> Dict[str, str]:
        """The model's version applications in Serve (by name alone: no full status read)."""
        prefix = self._app_prefix(model)
        return {app: app[len(prefix):] for app in await self._names.get()
                if app.startswith(prefix) and len(app) > len(prefix)}

    async def replicas(self, fleet: FleetId) -> Tuple[List[ObservedReplica], int]:
        """The fleet's RUNNING replicas (each serving, with an even share of the running
        requests) and the requests queued for it; none while its application is absent."""
        app, deployment = self.ref(fleet)
        dep = ((await self._details.get()).get(app) or {}).get("deployments", {}).get(deployment) or {}
        running = [r for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"]
        if not running:
            return [], 0
        load = self._load_of(app, deployment)
        share, extra = divmod(int(load.get("running", 0)), len(running))
        out = [ObservedReplica(r["replica_id"], ReplicaState.ACTIVE, CapacityType.ON_DEMAND,
                               share + (1 if i < extra else 0), node_id=r.get("node_id"))
               for i, r in enumerate(sorted(running, key=lambda r: r["replica_id"]))]
        return out, int(load.get("queued", 0))


def _serve_details() -> dict:
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def _serve_app_names() -> List[str]:
    """The applications of Serve's deployments: the Serve controller's deployment ids (Ray 2.60,
    as ``ServeControllerClient.get_handle`` checks them), a list of (app, name) pairs."""
    import ray
    from ray.serve.context import _get_global_client

    ids = ray.get(_get_global_client()._controller.list_deployment_ids.remote())
    return sorted({d.app_name for d in ids})


def _published_load(app: str, deployment: str) -> dict:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(load_key(app, deployment), namespace=TARGET_NAMESPACE)
    return json.loads(raw) if raw else {}
