"""Autoscaler configuration: the ``autoscaler`` section of the top-level config, and the
schema of the profiles shipped under ``autoscaler/*.yaml``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetserve.autoscaler.snapshot import CapacityType
from fleetserve.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScalingConfig(_Strict):
    """How many replicas to serve with, and how quickly to change that number."""

    min_replicas: int = Field(1, ge=0, description="Lower bound on serving replicas.")
    max_replicas: int = Field(32, ge=1, description="Upper bound on serving replicas (warm standbys not counted).")
    target_ongoing_per_replica: float = Field(
        24.0, gt=0, description="Requests (running + queued) one serving replica should carry; demand / this = replicas."
    )
    rate_lookahead_s: float = Field(
        0.0,
        ge=0,
        description="Scale up for the arrival rate projected this far ahead along its recent rising trend "
        "(about one cold-start time); 0 disables the projection.",
    )
    trend_window_s: float = Field(30.0, gt=0, description="Window over which the arrival-rate trend is measured.")
    trend_sample_interval_s: float = Field(
        10.0, ge=0, description="Keep one rate sample per this interval for the trend (the rate's own window)."
    )
    kv_high_watermark: float = Field(
        0.9, gt=0, le=1, description="KV-cache usage above which one more replica is asked for even if queues look fine."
    )
    upscale_tolerance: float = Field(
        0.0,
        ge=0,
        description="Scale up only when load exceeds current serving capacity by more than this fraction "
        "(Kubernetes HPA's tolerance): a replica's spare engine slots absorb the rest, and rate noise does "
        "not ratchet the fleet up past what the hysteresis band lets it shed.",
    )
    upscale_delay_s: float = Field(0.0, ge=0, description="Demand must exceed capacity this long before scaling up.")
    upscale_delay_skip_above: Optional[float] = Field(
        None,
        gt=0,
        description="Skip upscale_delay_s when the wanted replicas exceed the current ones by more than this "
        "fraction (Knative's panic mode): the delay filters noise, and a surge that large is not noise. "
        "None: always wait.",
    )
    downscale_delay_s: float = Field(
        300.0, ge=0, description="Demand must stay below the hysteresis band this long before scaling down."
    )
    downscale_margin: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Hysteresis band: scale down only when the wanted replicas are below current * (1 - margin).",
    )
    downscale_step: int = Field(1, ge=1, description="Most replicas removed by one scale-down step.")
    downscale_cooldown_s: float = Field(30.0, ge=0, description="Minimum time between two scale-down steps.")

    @model_validator(mode="after")
    def _bounds(self) -> "ScalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


class WarmPoolConfig(_Strict):
    """Standby replicas: loaded but not serving, woken in seconds instead of cold-started in minutes.

    The pool is sized relative to the fleet: ``ceil(fraction * serving target)``, clamped
    to ``[min_size, max_size]``. A surge the pool must absorb grows with the fleet (a
    diurnal ramp adds a share of the current load per cold-start time), while a small
    fleet still needs a floor of standbys for an absolute burst.
    """

    min_size: int = Field(0, ge=0, description="Fewest standbys kept, however small the fleet.")
    max_size: int = Field(0, ge=0, description="Most standbys kept, however large the fleet; 0 disables the warm pool.")
    fraction: float = Field(
        0.0, ge=0, description="Standbys per serving replica (of the policy's serving target) between the bounds."
    )
    burst_replicas: int = Field(
        0,
        ge=0,
        description="Burst floor: keep serving target + standbys at least this many, so a sudden jump to this "
        "many replicas' worth of load is met by waking standbys (seconds), not cold starts (minutes). The "
        "pool this asks for is large while the fleet is small and shrinks as serving grows; 0 disables it.",
    )
    cost_factor: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Cost of one standby-hour relative to a serving replica-hour (weights parked in host memory, "
        "GPU lendable to preemptible work).",
    )
    capacity_type: CapacityType = Field(
        CapacityType.ON_DEMAND, description="Capacity type standbys are started on (on_demand: they must be there when needed)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "WarmPoolConfig":
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        return self

    def target_size(self, serving: int) -> int:
        """Standbys wanted next to ``serving`` serving replicas."""
        wanted = max(math.ceil(self.fraction * serving - 1e-9), self.burst_replicas - serving)
        return max(self.min_size, min(self.max_size, wanted))


class SpotConfig(_Strict):
    """Spot as burst capacity over an on-demand base."""

    enabled: bool = Field(False, description="Allow spot replicas at all.")
    on_demand_base: int = Field(1, ge=0, description="Serving replicas kept on on-demand before any spot is used.")
    max_spot_share: float = Field(0.5, ge=0, le=1, description="Most spot replicas as a fraction of serving replicas.")
    max_price_ratio: float = Field(
        0.7, gt=0, description="Price ceiling: use spot only while its price / on-demand price is at most this."
    )
    migration_margin_s: float = Field(
        15.0,
        ge=0,
        description="After an interruption notice, requests still running this long before the deadline are migrated.",
    )
    drain_before_deadline_s: Optional[float] = Field(
        None,
        ge=0,
        description="Under an interruption notice, keep admitting requests until this long before the deadline, "
        "then drain (its replacement is requested at once either way). Must be >= migration_margin_s; leave "
        "enough between the two for in-flight requests to finish. None: drain as soon as the notice arrives.",
    )

    @model_validator(mode="after")
    def _drain_after_margin(self) -> "SpotConfig":
        if self.drain_before_deadline_s is not None and self.drain_before_deadline_s < self.migration_margin_s:
            raise ValueError(
                f"drain_before_deadline_s ({self.drain_before_deadline_s}) must be >= migration_margin_s "
                f"({self.migration_margin_s})"
            )
        return self


class ModelPolicyConfig(_Strict):
    """Autoscaling settings for one model (all its versions)."""

    policy: str = Field("fleetserve", description="Registered policy name (see fleetserve.autoscaler.registry).")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="Replica bounds, targets, hysteresis.")
    warm_pool: WarmPoolConfig = Field(default_factory=WarmPoolConfig, description="Standby replicas.")
    spot: SpotConfig = Field(default_factory=SpotConfig, description="Spot capacity use.")


class PlacementConfig(_Strict):
    """How replicas reach spot or on-demand Ray nodes: through custom resources the nodes
    advertise (``ray start --resources '{"spot": 1000}'``, or the Ray pod's resources in the
    chart). A replica asks for a sliver of its capacity's resource, so Ray places it only on
    such a node, and any number of replicas fit on one."""

    spot_resource: str = Field("spot", min_length=1, description="Custom resource every spot Ray node advertises.")
    on_demand_resource: Optional[str] = Field(
        None, description="Custom resource on-demand Ray nodes advertise; when set, on-demand replicas ask for it "
        "so they never land on spot nodes. None: on-demand replicas go wherever Ray puts them.")
    resource_amount: float = Field(
        0.001, gt=0, le=1, description="How much of the capacity resource one replica asks for (a sliver: the resource "
        "marks the node kind, it does not count replicas).")

    def ray_resources(self, capacity_type: CapacityType) -> Dict[str, float]:
        """The ``ray_actor_options["resources"]`` of a replica on ``capacity_type``."""
        name = self.spot_resource if capacity_type is CapacityType.SPOT else self.on_demand_resource
        return {name: self.resource_amount} if name else {}


class AutoscalerConfig(_Strict):
    """The ``autoscaler`` section: defaults for every model, overridable per model."""

    profile: Optional[str] = Field(None, description="Name of the profile this came from (informational).")
    description: Optional[str] = Field(None, description="What the profile is for.")
    tick_interval_s: float = Field(1.0, gt=0, description="How often the controller calls the policy.")
    defaults: ModelPolicyConfig = Field(default_factory=ModelPolicyConfig, description="Settings for models not listed.")
    models: Dict[str, ModelPolicyConfig] = Field(default_factory=dict, description="Per-model settings by model name.")
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="Spot / on-demand node placement.")
    controller: bool = Field(
        False, description="Run the scaling controller (a detached Ray actor applying the whole decision: warm pool, "
        "spot placement, drains). False: only the serving count reaches Ray Serve's autoscaler (ray_adapter).")

    def for_model(self, model: str) -> ModelPolicyConfig:
        return self.models.get(model, self.defaults)


def load_autoscaler_config(source: Union[str, Path, dict]) -> AutoscalerConfig:
    """Parse a profile YAML file (or an already-loaded dict); errors name the field."""
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read autoscaler profile {path}: {exc}") from exc
    try:
        return AutoscalerConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"autoscaler.{field}: {first['msg']}", field=f"autoscaler.{field}") from exc
