"""fleetserve.autoscaler: pure autoscaling policies (warm pool, spot) and a fleet simulator.

``decide(snapshot, state, now) -> (decision, state)`` plans one model version; the Ray
adapter (``ray_adapter:policy``) plugs the same logic into Ray Serve's policy hook.
"""

from fleetserve.autoscaler.config import AutoscalerConfig, ModelPolicyConfig, load_autoscaler_config
from fleetserve.autoscaler.decision import ColdStart, DrainOrder, DrainReason, ReplicaRole, ScalingDecision
from fleetserve.autoscaler.policy import FleetservePolicy, PolicyState, decide
from fleetserve.autoscaler.snapshot import (
    CapacityType,
    InterruptionNotice,
    ModelSnapshot,
    ReplicaState,
    ReplicaView,
    SpotMarket,
)

__all__ = [
    "AutoscalerConfig",
    "CapacityType",
    "ColdStart",
    "DrainOrder",
    "DrainReason",
    "FleetservePolicy",
    "InterruptionNotice",
    "ModelPolicyConfig",
    "ModelSnapshot",
    "PolicyState",
    "ReplicaRole",
    "ReplicaState",
    "ReplicaView",
    "ScalingDecision",
    "SpotMarket",
    "decide",
    "load_autoscaler_config",
]
