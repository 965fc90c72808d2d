"""A fake cluster honouring the :class:`FleetActuator` contract, on a fake clock.

Cold starts appear as serving replicas ``cold_start_s`` after ``start``; ``park`` and
``activate`` flip a replica between standby and serving; ``drain`` stops admission;
``stop`` removes a replica. It enforces what the real cluster would punish: stopping or
parking a replica with requests in flight (lost requests) raises, as does waking a replica
that is not a standby. Every call is recorded in ``calls``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from fleetserve.autoscaler.actuator import FleetId, ObservedFleet, ObservedReplica
from fleetserve.autoscaler.snapshot import CapacityType, ReplicaState, SpotMarket


@dataclass
class FakeFleet:
    clock: object
    cold_start_s: float = 60.0
    spot: SpotMarket = field(default_factory=SpotMarket)
    queued: int = 0
    replicas: Dict[str, ObservedReplica] = field(default_factory=dict)
    starting: List[Tuple[float, CapacityType]] = field(default_factory=list)
    calls: List[tuple] = field(default_factory=list)
    serve_stops_newest: bool = False  # a lower count removes the newest replica, as Ray Serve picks on one node
    _next: int = 0
    _lowered: List[CapacityType] = field(default_factory=list)

    def add(self, state=ReplicaState.ACTIVE, capacity_type=CapacityType.ON_DEMAND, running: int = 0) -> str:
        rid = f"r{self._next:02d}"
        self._next += 1
        self.replicas[rid] = ObservedReplica(rid, state, capacity_type, running, node_id=f"node-{capacity_type.value}")
        return rid

    def set_running(self, rid: str, running: int) -> None:
        self.replicas[rid] = replace(self.replicas[rid], running=running)

    def serving(self) -> List[str]:
        return sorted(r.replica_id for r in self.replicas.values() if r.state is ReplicaState.ACTIVE)

    def standby(self) -> List[str]:
        return sorted(r.replica_id for r in self.replicas.values() if r.state is ReplicaState.WARM_STANDBY)

    async def observe(self, fleet: FleetId) -> ObservedFleet:
        now = self.clock.now()
        for ctype in self._lowered:  # Serve: a replica still starting first, else the newest (ids in start order)
            starting = [s for s in self.starting if s[1] is ctype]
            if starting:
                self.starting.remove(starting[-1])
            else:  # its requests finish (Serve's graceful stop)
                self.replicas.pop(max(rid for rid, r in self.replicas.items() if r.capacity_type is ctype))
        self._lowered = []
        for t, ctype in [s for s in self.starting if s[0] <= now]:
            self.starting.remove((t, ctype))
            self.add(capacity_type=ctype)
        return ObservedFleet(fleet, tuple(self.replicas.values()), queued=self.queued, spot=self.spot)

    async def start(self, fleet: FleetId, capacity_type: CapacityType, count: int) -> None:
        self.calls.append(("start", capacity_type.value, count))
        self.starting += [(self.clock.now() + self.cold_start_s, capacity_type)] * count

    async def activate(self, fleet: FleetId, replica_id: str) -> None:
        self.calls.append(("activate", replica_id))
        r = self.replicas[replica_id]
        assert r.state in (ReplicaState.WARM_STANDBY, ReplicaState.DRAINING), f"activate of {replica_id} in {r.state}"
        self.replicas[replica_id] = replace(r, state=ReplicaState.ACTIVE)

    async def park(self, fleet: FleetId, replica_id: str) -> None:
        self.calls.append(("park", replica_id))
        r = self.replicas[replica_id]
        assert r.running == 0, f"parking {replica_id} with {r.running} requests in flight"
        self.replicas[replica_id] = replace(r, state=ReplicaState.WARM_STANDBY)

    async def drain(self, fleet: FleetId, replica_id: str, migrate: bool = False) -> None:
        self.calls.append(("drain", replica_id) + (("migrate",) if migrate else ()))
        self.replicas[replica_id] = replace(self.replicas[replica_id], state=ReplicaState.DRAINING)

    async def stop(self, fleet: FleetId, replica_id: str) -> None:
        self.calls.append(("stop", replica_id))
        if self.serve_stops_newest:  # carried out before the next observe, as Serve acts after the tick
            self._lowered.append(self.replicas[replica_id].capacity_type)  # that deployment's count
            return
        r = self.replicas.pop(replica_id)
        assert r.running == 0, f"stopped {replica_id} with {r.running} requests in flight: they would be lost"

    def stop_another(self, keep: str, instead: str) -> None:
        """What Serve may do on a lower count: keep ``keep`` (drained) and stop ``instead``."""
        self.replicas[keep] = replace(self.replicas[keep], state=ReplicaState.DRAINING)
        self.replicas.pop(instead)

    def actions(self, kind: Optional[str] = None) -> List[tuple]:
        return [c for c in self.calls if kind is None or c[0] == kind]
