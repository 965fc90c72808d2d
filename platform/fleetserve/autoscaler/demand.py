"""Demand estimate: how many requests the fleet must carry, now and a little ahead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from fleetserve.autoscaler.config import ScalingConfig
from fleetserve.autoscaler.snapshot import ModelSnapshot


@dataclass(frozen=True)
class RateTrend:
    """Recent (time, arrival rate) samples, oldest first, covering ``trend_window_s``."""

    samples: Tuple[Tuple[float, float], ...] = ()

    def observe(self, now: float, rate: Optional[float], window_s: float, spacing_s: float = 0.0) -> "RateTrend":
        if rate is None:
            return self
        if self.samples and now - self.samples[-1][0] < spacing_s:
            return self  # overlapping rate windows are not independent samples
        kept = tuple((t, r) for t, r in self.samples if now - t <= window_s and t < now)
        return RateTrend(kept + ((now, rate),))

    def slope(self, min_t_stat: float = 3.0) -> float:
        """Least-squares slope of rate over time (requests/s per s), or 0 when it is not
        clearly above noise (t-statistic below ``min_t_stat``): Poisson jitter in the
        measured rate, multiplied by the lookahead, would otherwise buy replicas."""
        n = len(self.samples)
        if n < 3:
            return 0.0
        mt = sum(t for t, _ in self.samples) / n
        mr = sum(r for _, r in self.samples) / n
        var = sum((t - mt) ** 2 for t, _ in self.samples)
        if var <= 0:
            return 0.0
        slope = sum((t - mt) * (r - mr) for t, r in self.samples) / var
        resid = sum((r - mr - slope * (t - mt)) ** 2 for t, r in self.samples) / (n - 2)
        stderr = (resid / var) ** 0.5
        if stderr > 0 and slope / stderr < min_t_stat:
            return 0.0
        return slope


def estimate_load(snapshot: ModelSnapshot, trend: RateTrend, cfg: ScalingConfig) -> float:
    """Concurrent requests the fleet should be sized for.

    The larger of what is in the system now (running + queued) and, by Little's law,
    what the arrival rate projected ``rate_lookahead_s`` ahead along a *rising* trend
    will keep in the system. Falling trends are ignored: scale-down stays slow.
    """
    load = float(snapshot.ongoing)
    if snapshot.arrival_rate is not None and snapshot.mean_service_time_s:
        rate = snapshot.arrival_rate + max(0.0, trend.slope()) * cfg.rate_lookahead_s
        load = max(load, rate * snapshot.mean_service_time_s)
    return load
