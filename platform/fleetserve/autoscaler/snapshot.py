"""Typed inputs to an autoscaling policy: what one model version's fleet looks like now.

A controller (the Ray adapter, the simulator, later the platform controller) builds a
:class:`ModelSnapshot` from whatever it observes; the policy never reaches out for data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Tuple


class ReplicaState(str, enum.Enum):
    """Lifecycle of one replica. ``STARTING`` (and a ``DRAINING`` replica returning to the
    warm pool) ends in ``ReplicaView.becomes``."""

    STARTING = "starting"
    WARM_STANDBY = "warm_standby"  # loaded, not serving, cheap to keep
    ACTIVE = "active"
    DRAINING = "draining"  # admits nothing new; finishing or migrating its requests


class CapacityType(str, enum.Enum):
    ON_DEMAND = "on_demand"
    SPOT = "spot"


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the policy sees it."""

    replica_id: str
    state: ReplicaState
    capacity_type: CapacityType = CapacityType.ON_DEMAND
    running: int = 0  # requests in flight on this replica
    # Where a STARTING replica ends up: ACTIVE (serving) or WARM_STANDBY (pool refill).
    # A DRAINING replica with WARM_STANDBY here returns to the pool once empty (None: it stops).
    becomes: Optional[ReplicaState] = None

    @property
    def will_serve(self) -> bool:
        """Serving now, or starting/activating in order to serve."""
        if self.state is ReplicaState.ACTIVE:
            return True
        return self.state is ReplicaState.STARTING and self.becomes is not ReplicaState.WARM_STANDBY

    @property
    def is_standby_or_pending_standby(self) -> bool:
        """Loaded standby, or on its way to one (loading, or draining back to the pool)."""
        if self.state is ReplicaState.WARM_STANDBY:
            return True
        pending = (ReplicaState.STARTING, ReplicaState.DRAINING)
        return self.state in pending and self.becomes is ReplicaState.WARM_STANDBY


@dataclass(frozen=True)
class InterruptionNotice:
    """The provider will reclaim ``replica_id`` (a spot replica) at ``deadline``."""

    replica_id: str
    deadline: float


@dataclass(frozen=True)
class SpotMarket:
    """Whether spot capacity can be had now, and its price relative to on-demand (1.0)."""

    available: bool = True
    price_ratio: float = 0.35


@dataclass(frozen=True)
class ModelSnapshot:
    """Everything the policy may use about one model version at one instant."""

    model: str
    version: str = "v1"
    queued_at_router: int = 0
    queued_at_replicas: int = 0
    running: int = 0
    kv_usage: Optional[float] = None  # mean fraction of KV blocks in use on active replicas
    arrival_rate: Optional[float] = None  # requests/s over the recent window
    mean_service_time_s: Optional[float] = None  # recent mean request duration on a replica
    replicas: Tuple[ReplicaView, ...] = ()
    interruptions: Tuple[InterruptionNotice, ...] = ()
    spot: SpotMarket = field(default_factory=SpotMarket)

    @property
    def ongoing(self) -> int:
        """Requests in the system: queued anywhere plus running."""
        return self.queued_at_router + self.queued_at_replicas + self.running

    @property
    def has_traffic(self) -> bool:
        return self.ongoing > 0 or bool(self.arrival_rate and self.arrival_rate > 0)

    def replica(self, replica_id: str) -> Optional[ReplicaView]:
        for r in self.replicas:
            if r.replica_id == replica_id:
                return r
        return None
