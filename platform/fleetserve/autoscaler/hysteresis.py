"""Fast-up / slow-down replica targets with hysteresis, reusable by any policy.

Given the replicas a policy *wants* right now, decide the replicas it *gets*: more at
once (after an optional delay), fewer only after demand has stayed clearly below the
current count for a while, and then one step at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from fleetserve.autoscaler.config import ScalingConfig


@dataclass(frozen=True)
class HysteresisState:
    above_since: Optional[float] = None  # when wanted first exceeded current (this streak)
    below_since: Optional[float] = None  # when wanted first fell below the band (this streak)
    last_scale_down_at: Optional[float] = None


class HysteresisScaler:
    """Applies bounds and hysteresis from a :class:`ScalingConfig`."""

    def __init__(self, config: ScalingConfig):
        self.config = config

    def clamp(self, n: int) -> int:
        return max(self.config.min_replicas, min(self.config.max_replicas, n))

    def apply(self, current: int, wanted: int, state: HysteresisState, now: float) -> Tuple[int, HysteresisState]:
        cfg = self.config
        wanted = self.clamp(wanted)
        if not cfg.min_replicas <= current <= cfg.max_replicas:
            # Out of bounds (config changed, replicas lost): go straight back inside.
            return wanted, HysteresisState(last_scale_down_at=state.last_scale_down_at)
        if wanted > current:
            above_since = state.above_since if state.above_since is not None else now
            surge = cfg.upscale_delay_skip_above is not None and wanted > current * (1 + cfg.upscale_delay_skip_above)
            if surge or now - above_since >= cfg.upscale_delay_s:
                return wanted, HysteresisState(last_scale_down_at=state.last_scale_down_at)
            return current, replace(state, above_since=above_since, below_since=None)
        band = math.floor(current * (1.0 - cfg.downscale_margin))
        if wanted >= current or wanted > band:
            return current, replace(state, above_since=None, below_since=None)
        below_since = state.below_since if state.below_since is not None else now
        cooled = state.last_scale_down_at is None or now - state.last_scale_down_at >= cfg.downscale_cooldown_s
        if now - below_since >= cfg.downscale_delay_s and cooled:
            target = max(wanted, current - cfg.downscale_step)
            # The streak continues: further steps only wait for the cooldown.
            return target, HysteresisState(below_since=below_since, last_scale_down_at=now)
        return current, replace(state, above_since=None, below_since=below_since)
