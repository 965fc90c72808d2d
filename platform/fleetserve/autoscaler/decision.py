"""A scaling decision as data. A controller (or the simulator) carries it out."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple

from fleetserve.autoscaler.snapshot import CapacityType


class ReplicaRole(str, enum.Enum):
    """What a cold-started replica becomes once loaded."""

    SERVING = "serving"
    STANDBY = "standby"  # warm-pool refill


class DrainReason(str, enum.Enum):
    SCALE_DOWN = "scale_down"
    SPOT_INTERRUPTION = "spot_interruption"


@dataclass(frozen=True)
class ColdStart:
    """Start ``count`` new replicas on ``capacity_type``; they load the model from scratch."""

    count: int
    capacity_type: CapacityType
    role: ReplicaRole = ReplicaRole.SERVING


@dataclass(frozen=True)
class DrainOrder:
    """Stop admitting requests to ``replica_id``.

    ``migrate_by``: in-flight requests still running at that time are re-queued at the
    router (with their generated tokens re-prefilled elsewhere); ``None`` lets them finish.
    ``return_to_pool``: once empty the replica becomes a warm standby instead of stopping.
    """

    replica_id: str
    reason: DrainReason
    migrate_by: Optional[float] = None
    return_to_pool: bool = False


@dataclass(frozen=True)
class ScalingDecision:
    """What to do for one model version now. Empty tuples mean "nothing to do"."""

    model: str
    version: str
    target_replicas: int  # replicas that should be serving (active or on their way)
    activate: Tuple[str, ...] = ()  # warm standbys to wake, by id
    cold_starts: Tuple[ColdStart, ...] = ()
    drains: Tuple[DrainOrder, ...] = ()
    notes: Tuple[str, ...] = ()  # human-readable reasons, for logs and the simulator

    def num_cold_starts(self, role: Optional[ReplicaRole] = None, capacity_type: Optional[CapacityType] = None) -> int:
        return sum(
            c.count
            for c in self.cold_starts
            if (role is None or c.role is role) and (capacity_type is None or c.capacity_type is capacity_type)
        )

    @property
    def refill(self) -> int:
        """Standbys started cold to refill the warm pool."""
        return self.num_cold_starts(role=ReplicaRole.STANDBY)

    @property
    def is_noop(self) -> bool:
        return not (self.activate or self.cold_starts or self.drains)
