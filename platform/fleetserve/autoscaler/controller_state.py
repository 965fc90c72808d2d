"""What the scaling controller remembers, and where it keeps it across its own restarts.

Per fleet (model version): the policy's state, the cold starts it asked for and has not
seen arrive yet (with the role each will take), the replicas it is draining and what each
becomes once empty, operator overrides (``fleetserve scale``), and the last decision (for
``fleetserve status`` and the metrics). Dumped as JSON to the store after every tick that
changed it (table ``scaling``, one key per fleet) and reloaded on start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from fleetserve.autoscaler.decision import ReplicaRole
from fleetserve.autoscaler.snapshot import CapacityType

TABLE = "scaling"


@dataclass
class PendingStart:
    """A cold start asked for and not yet seen as a replica."""

    role: ReplicaRole
    capacity_type: CapacityType
    requested_at: float


@dataclass
class DrainPlan:
    """A replica draining: parked into the warm pool (``to_pool``) or stopped once empty."""

    to_pool: bool
    since: float
    reason: str = "scale_down"
    migrate: bool = False  # its requests were handed back to be resumed elsewhere (an interruption)


@dataclass
class ScaleOverride:
    """Operator bounds from ``fleetserve scale``: replace the profile's when set."""

    min_replicas: Optional[int] = None
    max_replicas: Optional[int] = None
    warm: Optional[int] = None


@dataclass
class FleetState:
    policy: Dict[str, Any] = field(default_factory=dict)  # PolicyState.to_dict()
    pending: List[PendingStart] = field(default_factory=list)
    draining: Dict[str, DrainPlan] = field(default_factory=dict)
    roles: Dict[str, str] = field(default_factory=dict)  # replica id -> "serving" | "standby", as the controller set it
    override: ScaleOverride = field(default_factory=ScaleOverride)
    stopping: Dict[str, float] = field(default_factory=dict)  # replica id -> when we stopped it (Serve removes it soon)
    last_decision: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: Optional[str]) -> "FleetState":
        if not text:
            return cls()
        d = json.loads(text)
        return cls(
            policy=d.get("policy") or {},
            pending=[PendingStart(ReplicaRole(p["role"]), CapacityType(p["capacity_type"]), float(p["requested_at"]))
                     for p in d.get("pending", [])],
            draining={rid: DrainPlan(**p) for rid, p in d.get("draining", {}).items()},
            roles=dict(d.get("roles", {})),
            override=ScaleOverride(**(d.get("override") or {})),
            stopping={rid: float(t) for rid, t in (d.get("stopping") or {}).items()},
            last_decision=d.get("last_decision") or {},
        )
