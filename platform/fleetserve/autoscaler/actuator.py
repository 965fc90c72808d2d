"""What the scaling controller observes of a fleet, and the thin actuator protocol it acts through.

The controller (:mod:`fleetserve.autoscaler.controller`) never talks to Ray itself: it reads an
:class:`ObservedFleet` and calls a :class:`FleetActuator`. The real one drives Ray Serve
(:mod:`fleetserve.application.serve_fleet`); unit tests use a fake that honours the same
contract (tests/autoscaler/fake_fleet.py).

Contract of the actions (each idempotent, none waits for the effect):

- ``start(fleet, capacity_type, count)``: cold-start ``count`` more replicas of the fleet on
  that capacity; they show up in a later ``observe`` as new ids, serving.
- ``activate(fleet, replica)``: wake a parked standby (or resume a draining replica); it
  rejoins routing.
- ``park(fleet, replica)``: take a replica out of routing and put its engine to sleep (weights
  kept, KV released): it becomes a warm standby once its requests finished.
- ``drain(fleet, replica, migrate)``: stop admitting new requests; requests in flight finish
  there, or with ``migrate`` are handed back at once to be resumed on other replicas.
- ``stop(fleet, replica)``: remove a (drained, empty) replica for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Tuple

from fleetserve.autoscaler.snapshot import CapacityType, InterruptionNotice, ReplicaState, SpotMarket


@dataclass(frozen=True)
class FleetId:
    """One model version: the unit the policy plans for."""

    model: str
    version: str

    @property
    def key(self) -> str:
        return f"{self.model}@{self.version}"

    @classmethod
    def parse(cls, key: str) -> "FleetId":
        model, _, version = key.rpartition("@")
        return cls(model, version)


@dataclass(frozen=True)
class ObservedReplica:
    """One replica as last seen: ACTIVE, WARM_STANDBY (parked) or DRAINING."""

    replica_id: str
    state: ReplicaState
    capacity_type: CapacityType = CapacityType.ON_DEMAND
    running: int = 0  # requests in flight on it
    kv_usage: float = 0.0
    node_id: Optional[str] = None


@dataclass(frozen=True)
class ObservedFleet:
    fleet: FleetId
    replicas: Tuple[ObservedReplica, ...] = ()
    queued: int = 0  # requests waiting at the router and in the engines
    arrival_rate: Optional[float] = None
    spot: SpotMarket = SpotMarket()
    interruptions: Tuple[InterruptionNotice, ...] = ()

    def replica(self, replica_id: str) -> Optional[ObservedReplica]:
        return next((r for r in self.replicas if r.replica_id == replica_id), None)


class FleetActuator(Protocol):
    async def observe(self, fleet: FleetId) -> ObservedFleet: ...

    async def start(self, fleet: FleetId, capacity_type: CapacityType, count: int) -> None: ...

    async def activate(self, fleet: FleetId, replica_id: str) -> None: ...

    async def park(self, fleet: FleetId, replica_id: str) -> None: ...

    async def drain(self, fleet: FleetId, replica_id: str, migrate: bool = False) -> None: ...

    async def stop(self, fleet: FleetId, replica_id: str) -> None: ...
