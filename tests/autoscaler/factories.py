"""Shared builders for autoscaler tests; each takes ``**overrides``."""

from __future__ import annotations

from fleetserve.autoscaler.config import ModelPolicyConfig, ScalingConfig, SpotConfig, WarmPoolConfig
from fleetserve.autoscaler.snapshot import CapacityType, ModelSnapshot, ReplicaState, ReplicaView


def make_config(scaling=None, warm_pool=None, spot=None) -> ModelPolicyConfig:
    base_scaling = dict(min_replicas=1, max_replicas=10, target_ongoing_per_replica=10, downscale_delay_s=60,
                        downscale_cooldown_s=10, downscale_margin=0.2)
    base_scaling.update(scaling or {})
    return ModelPolicyConfig(
        scaling=ScalingConfig(**base_scaling),
        warm_pool=WarmPoolConfig(**(warm_pool or {})),
        spot=SpotConfig(**(spot or {})),
    )


def active(rid: str, ctype=CapacityType.ON_DEMAND, running: int = 0) -> ReplicaView:
    return ReplicaView(rid, ReplicaState.ACTIVE, ctype, running)


def standby(rid: str) -> ReplicaView:
    return ReplicaView(rid, ReplicaState.WARM_STANDBY)


def make_snapshot(**overrides) -> ModelSnapshot:
    fields = dict(model="m", running=0, replicas=(active("a0"),))
    fields.update(overrides)
    return ModelSnapshot(**fields)
