"""The scaling controller's actuator on Ray Serve (:class:`FleetActuator`).

A fleet (model version) is one Serve deployment per capacity type: the on-demand one and a
spot twin whose replicas ask for the spot resource (``PlacementConfig.ray_resources``), so
Ray places them on spot nodes only. Both run ``ModelReplica``.

- *Counts*: Serve's autoscaler carries out the count the controller writes to Ray's GCS KV
  (``ray_adapter.controller_target``, the deployment's policy hook): ``start`` raises it,
  ``stop`` lowers it.
- *Roles*: ``park``/``activate``/``drain`` are handle calls pinned to one replica
  (``target_replica``, honoured by the replica router and checked by the replica).
- *Observation*: the replica stats board of this process, which the deployments' routers
  keep current (Serve pushes every replica's routing stats to them).
- *Runtime versions* (canaries, each its own Serve application with the same replica router):
  the same deployment per fleet, named by :mod:`fleetserve.application.version_fleets`,
  observed, counted and pinned the same way; they have no spot twin (on-demand only).

What Serve does not let us choose: which replica a lower count stops. The controller lowers
the count only once its chosen replica is drained and empty; should Serve stop another one
(on one node it stops the newest), that replica's graceful shutdown drains it
(``graceful_shutdown_timeout_s`` = its ``drain_timeout_s`` + 5 s), so no request is cut, and
the controller's chosen replica takes the stopped one's role on its next tick
(``ScalingController._stand_in``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Collection, Dict, Mapping, Optional

from fleetserve.application.version_fleets import ServeVersionApps
from fleetserve.autoscaler.actuator import FleetId, ObservedFleet, ObservedReplica
from fleetserve.autoscaler.config import PlacementConfig
from fleetserve.autoscaler.node_drains import NodeDrain
from fleetserve.autoscaler.ray_adapter import TARGET_NAMESPACE, target_key
from fleetserve.autoscaler.snapshot import CapacityType, ReplicaState, SpotMarket
from fleetserve.deployments.replica_control import TARGET_REPLICA_KWARG
from fleetserve.router.stats_board import ReplicaStatsBoard, process_board

log = logging.getLogger(__name__)
INIT_CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DeploymentRef:
    app_name: str
    deployment: str


class GcsCounts:
    """Replica counts in Ray's GCS KV, read by ``ray_adapter.controller_target``."""

    def get(self, ref: DeploymentRef) -> Optional[int]:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(target_key(ref.app_name, ref.deployment), namespace=TARGET_NAMESPACE)
        return None if raw is None else int(raw)

    def put(self, ref: DeploymentRef, count: int) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(target_key(ref.app_name, ref.deployment), str(count).encode(), overwrite=True,
                         namespace=TARGET_NAMESPACE)


def spot_nodes_alive(placement: PlacementConfig, draining: Collection[str] = ()) -> bool:
    """Some live spot node that is not being drained (a draining one takes no new replica)."""
    import ray

    return any(n.get("Alive") and n.get("Resources", {}).get(placement.spot_resource, 0) > 0
               and n.get("NodeID") not in draining for n in ray.nodes())


class RayNodeDrains:
    """The nodes Ray's GCS is draining (``DrainNode``: ``ray drain-node``, autoscaler v2), with
    their deadlines: the same table Serve reads (``GlobalState.get_draining_nodes``, Ray 2.60:
    hex node id -> deadline in ms since the epoch, 0 for none)."""

    def draining_nodes(self) -> Dict[str, NodeDrain]:
        from ray._private.state import state

        return {node: NodeDrain(node, deadline_ms / 1000.0 if deadline_ms else None)
                for node, deadline_ms in state.get_draining_nodes().items()}


class ServeFleetActuator:
    def __init__(self, fleets: Mapping[str, Mapping[CapacityType, DeploymentRef]], placement: PlacementConfig,
                 board: Optional[ReplicaStatsBoard] = None, counts: Optional[GcsCounts] = None,
                 spot_available: Optional[Callable[[], bool]] = None,
                 handle_for: Optional[Callable[[DeploymentRef], object]] = None,
                 versions: Optional[ServeVersionApps] = None):
        """``handle_for``: a deployment's handle (default: ``serve.get_deployment_handle``);
        ``versions``: the deployment of a fleet not in ``fleets`` (a runtime version); None:
        only ``fleets``."""
        self._fleets = {k: dict(v) for k, v in fleets.items()}
        self._placement = placement
        self._board = board or process_board()
        self._counts = counts or GcsCounts()
        self._spot_available = spot_available or (lambda: spot_nodes_alive(placement))
        self._handle_for = handle_for
        self._handles: Dict[DeploymentRef, object] = {}
        self._where: Dict[str, DeploymentRef] = {}  # replica id -> its deployment
        self._versions = versions

    def _handle(self, ref: DeploymentRef):
        if ref not in self._handles:
            if self._handle_for is not None:
                self._handles[ref] = self._handle_for(ref)
            else:
                from ray import serve

                self._handles[ref] = serve.get_deployment_handle(ref.deployment, app_name=ref.app_name)
        return self._handles[ref]

    def _refs(self, fleet: FleetId) -> Dict[CapacityType, DeploymentRef]:
        """The fleet's deployments: a configured one's (and its spot twin), else the runtime
        version's one on-demand deployment; none without a version source."""
        if fleet.key in self._fleets:
            return self._fleets[fleet.key]
        if self._versions is None:
            return {}
        return {CapacityType.ON_DEMAND: DeploymentRef(*self._versions.ref(fleet))}

    async def observe(self, fleet: FleetId) -> ObservedFleet:
        refs = self._refs(fleet)
        replicas, queued = [], 0
        mine = set(refs.values())  # replicas gone since the last look are forgotten
        self._where = {rid: ref for rid, ref in self._where.items() if ref not in mine}
        for ctype, ref in refs.items():
            if self._board.replicas(ref.deployment) is None and await self._has_running(fleet):
                await self._init_router(ref)
            for e in self._board.replicas(ref.deployment) or []:
                s = e.stats
                if s.ts is None:
                    continue  # not reported yet (still loading, as far as anyone can tell): not adopted
                state = (ReplicaState.WARM_STANDBY if s.standby else
                         ReplicaState.DRAINING if s.draining else ReplicaState.ACTIVE)
                replicas.append(ObservedReplica(e.replica, state, ctype, s.in_flight, s.kv_usage, s.node_id))
                queued += s.num_waiting
                self._where[e.replica] = ref
        # Ray's node table (two blocking GCS reads) only for a fleet with a spot twin: without
        # one (a runtime version never has one) the policy places nothing on spot anyway.
        twins = self._fleets.get(fleet.key, {})
        spot = SpotMarket(available=CapacityType.SPOT in twins and self._spot_available())
        return ObservedFleet(fleet, tuple(replicas), queued=queued, spot=spot)

    async def _has_running(self, fleet: FleetId) -> bool:
        """Whether a first call can be answered now: always asked of a configured fleet; a
        runtime version's (whose replicas may still be loading) only once Serve runs one, so
        its loading does not hold up every tick for ``INIT_CALL_TIMEOUT_S``."""
        return fleet.key in self._fleets or self._versions is None or await self._versions.running(fleet) > 0

    async def _init_router(self, ref: DeploymentRef) -> None:
        """A handle's router starts (and publishes to the board) with its first call."""
        try:
            await asyncio.wait_for(self._handle(ref).stats.remote(), INIT_CALL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - no replica up yet: the next tick tries again
            log.debug("router of %s not ready: %r", ref.deployment, exc)

    async def start(self, fleet: FleetId, capacity_type: CapacityType, count: int) -> None:
        refs = self._refs(fleet)
        ref = refs.get(capacity_type) or refs.get(CapacityType.ON_DEMAND)
        if ref is not None:
            self._counts.put(ref, self._current(ref) + count)

    async def stop(self, fleet: FleetId, replica_id: str) -> None:
        ref = self._where.get(replica_id)
        if ref is not None:
            self._counts.put(ref, max(0, self._current(ref) - 1))

    def _current(self, ref: DeploymentRef) -> int:
        """The count to raise or lower: the one last written, else the replicas ``observe``
        reports (reported ones only: one Serve started that has not reported yet is, to the
        policy, not there, and its cold start plans it again; counting it here too started
        it twice at deploy time)."""
        known = self._counts.get(ref)
        if known is not None:
            return known
        return sum(1 for e in self._board.replicas(ref.deployment) or [] if e.stats.ts is not None)

    async def _pinned(self, replica_id: str, method: str, *args, **kwargs) -> None:
        ref = self._where.get(replica_id)
        if ref is None:
            return
        await getattr(self._handle(ref), method).remote(*args, **kwargs, **{TARGET_REPLICA_KWARG: replica_id})

    async def activate(self, fleet: FleetId, replica_id: str) -> None:
        await self._pinned(replica_id, "set_standby", False)

    async def park(self, fleet: FleetId, replica_id: str) -> None:
        await self._pinned(replica_id, "set_standby", True)

    async def drain(self, fleet: FleetId, replica_id: str, migrate: bool = False) -> None:
        await self._pinned(replica_id, "set_draining", True, mode="migrate" if migrate else None)
