"""Runtime model versions as fleets of the scaling controller: which ones to plan, with what
traffic weight, and which deployment each one is.

A version deployed at runtime (a canary, or a promoted one) is its own Serve application
(:class:`~fleetserve.application.versions.ServeVersionDeployer`) whose model deployment has
the stable deployment's options, replica router included. So the controller observes and
acts on it exactly as on a stable one (``serve_fleet.ServeFleetActuator``: the replica stats
board, pinned park/wake/drain calls, the GCS count); this module only says which version
applications Serve runs (:class:`ServeVersionApps`) and which of them to plan
(:class:`RegistryFleetCatalog`).

Two Serve reads, each in a thread and shared by every fleet of a tick: which applications
exist comes from Serve's deployment ids (``list_deployment_ids``, a small call) every tick;
Serve's full status (``get_serve_instance_details``, which the Serve controller builds for
every application, deployment and replica) only for how many replicas a runtime version
runs, so it is never read while no runtime version exists (the common case).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Dict, Generic, Iterable, List, Mapping, Optional, Protocol, Tuple, TypeVar

from fleetserve.autoscaler.actuator import FleetId
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


class ServeVersionApps:
    """Runtime versions' applications in Serve, and each fleet's (app, deployment), for
    :class:`RegistryFleetCatalog` and ``serve_fleet.ServeFleetActuator``.

    ``app_names``: the applications Serve runs (default: the Serve controller's deployment
    ids); ``details``: Serve's instance details (default: the Serve client's), read only for
    a version's running replicas. Each read serves every fleet of a tick (cached ``max_age_s``)."""

    def __init__(self, app_prefix: Callable[[str], str], deployment_of: Callable[[str, str], Tuple[str, str]],
                 details: Optional[ServeDetails] = None, clock: Callable[[], float] = time.monotonic,
                 max_age_s: float = 1.0, app_names: Optional[ServeAppNames] = None):
        """``app_prefix(model)``: what every version application of the model is named
        ``<prefix><version>``; ``deployment_of(model, version)``: its (app, deployment)."""
        self._app_prefix = app_prefix
        self._deployment_of = deployment_of
        details = details or _serve_details
        self._details = _TickRead(lambda: details().get("applications") or {}, clock, max_age_s)
        names = app_names or _serve_app_names
        self._names = _TickRead(lambda: frozenset(names()), clock, max_age_s)

    def ref(self, fleet: FleetId) -> Tuple[str, str]:
        return self._deployment_of(fleet.model, fleet.version)

    async def running(self, fleet: FleetId) -> int:
        """The fleet's replicas Serve runs (RUNNING), from Serve's full status."""
        app, deployment = self.ref(fleet)
        dep = ((await self._details.get()).get(app) or {}).get("deployments", {}).get(deployment) or {}
        return sum(1 for r in dep.get("replicas") or [] if r.get("state") == "RUNNING")

    async def deployed(self, model: str) -> Dict[str, str]:
        """The model's version applications in Serve (by name alone: no full status read)."""
        prefix = self._app_prefix(model)
        return {app: app[len(prefix):] for app in await self._names.get()
                if app.startswith(prefix) and len(app) > len(prefix)}


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
