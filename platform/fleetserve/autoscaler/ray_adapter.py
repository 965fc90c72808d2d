"""Plug the fleetserve policy into Ray Serve's custom autoscaling hook.

    AutoscalingConfig(
        min_replicas=1, max_replicas=16,
        upscale_delay_s=0, downscale_delay_s=0,   # fleetserve applies its own hysteresis
        policy=AutoscalingPolicy(policy_function="fleetserve.autoscaler.ray_adapter:policy"),
    )

Ray calls ``policy(ctx) -> (num_replicas, policy_state)`` and then applies its own
scaling factors, delays and min/max bounds on top, so set Ray's delays to 0. Ray only
takes a replica count: warm-pool wakes, capacity types and migration need the fleetserve
controller; here they collapse into the serving target. For per-deployment settings use
the class form, ``policy_function="fleetserve.autoscaler.ray_adapter:FleetserveRayPolicy"``
with ``policy_kwargs={"profile": "autoscaler/balanced.yaml"}`` (or ``{"config": {...}}``).

Replicas may report ``arrival_rate``, ``mean_service_time_s``, ``kv_usage`` and ``in_flight``
through ``record_autoscaling_stats``; they are used when present (``ModelReplica`` reports
the last two: requests on replica links never pass through Serve's counters).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from fleetserve.autoscaler.config import AutoscalerConfig, ModelPolicyConfig, load_autoscaler_config
from fleetserve.autoscaler.policy import FleetservePolicy, PolicyState
from fleetserve.autoscaler.snapshot import ModelSnapshot, ReplicaState, ReplicaView

STATE_KEY = "fleetserve"


def snapshot_from_context(ctx: Any) -> ModelSnapshot:
    """Translate a Ray ``AutoscalingContext`` into a :class:`ModelSnapshot`."""
    running_ids = [str(getattr(r, "unique_id", r)) for r in ctx.running_replicas]
    replicas = [ReplicaView(rid, ReplicaState.ACTIVE) for rid in running_ids]
    # Replicas Ray is already starting toward its current target count as "starting".
    for i in range(max(0, ctx.target_num_replicas - len(running_ids))):
        replicas.append(ReplicaView(f"pending-{i}", ReplicaState.STARTING, becomes=ReplicaState.ACTIVE))
    queued = ctx.total_queued_requests or 0.0
    metrics = ctx.aggregated_metrics or {}
    return ModelSnapshot(
        model=ctx.deployment_name,
        version=ctx.app_name or "default",
        queued_at_router=int(round(queued)),
        # Requests streaming over replica links are invisible to Serve's own count.
        running=int(round(max(ctx.total_running_requests or 0.0, _sum(metrics.get("in_flight")) or 0.0))),
        kv_usage=_mean(metrics.get("kv_usage")),
        arrival_rate=_sum(metrics.get("arrival_rate")),
        mean_service_time_s=_mean(metrics.get("mean_service_time_s")),
        replicas=tuple(replicas),
    )


def _mean(per_replica: Optional[Dict[Any, float]]) -> Optional[float]:
    if not per_replica:
        return None
    return sum(per_replica.values()) / len(per_replica)


def _sum(per_replica: Optional[Dict[Any, float]]) -> Optional[float]:
    if not per_replica:
        return None
    return float(sum(per_replica.values()))


class FleetserveRayPolicy:
    """Class-form Ray policy; Ray instantiates it once with ``policy_kwargs``."""

    def __init__(self, profile: Optional[str] = None, config: Optional[Dict[str, Any]] = None, model: Optional[str] = None):
        if profile is not None:
            model_cfg = load_autoscaler_config(profile).for_model(model or "")
        elif config is not None:
            model_cfg = ModelPolicyConfig.model_validate(config)
        else:
            model_cfg = AutoscalerConfig().defaults
        self.policy = FleetservePolicy(model_cfg)

    def __call__(self, ctx: Any) -> Tuple[int, Dict[str, Any]]:
        snap = snapshot_from_context(ctx)
        state = PolicyState.from_dict((ctx.policy_state or {}).get(STATE_KEY))
        now = ctx.current_time if ctx.current_time is not None else 0.0
        decision, new_state = self.policy.decide(snap, state, now)
        target = max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, decision.target_replicas))
        out = dict(ctx.policy_state or {})
        out[STATE_KEY] = new_state.to_dict()
        return target, out


# Holds only configuration: all per-deployment state travels in ctx.policy_state.
_DEFAULT_POLICY = FleetserveRayPolicy()


def policy(ctx: Any) -> Tuple[int, Dict[str, Any]]:
    """Function-form Ray policy with the default settings (``ModelPolicyConfig()``)."""
    return _DEFAULT_POLICY(ctx)


# -- the scaling controller's count ---------------------------------------------------------
# With the controller on (``autoscaler.controller``), Serve's autoscaler only carries out the
# replica count the controller wrote (serving + standbys + draining), read from Ray's GCS KV.

TARGET_NAMESPACE = "fleetserve_scaling"


def target_key(app_name: str, deployment: str) -> bytes:
    return f"{app_name}/{deployment}".encode()


def controller_target(ctx: Any) -> Tuple[int, Dict[str, Any]]:
    """Ray policy hook: the controller's count for this deployment (unchanged until it writes one)."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(target_key(ctx.app_name, ctx.deployment_name), namespace=TARGET_NAMESPACE)
    target = int(raw) if raw is not None else ctx.target_num_replicas
    return target, dict(ctx.policy_state or {})
