"""Built-in workloads: steady, spike (10x), diurnal, spot-storm and spot-storm-flat.

Arrivals are a non-homogeneous Poisson process drawn by thinning with a seeded RNG.
Each request is ``interactive`` (80%) or ``batch`` (20%); prompt and output lengths are
log-normal around 1,000 and 300 tokens (clipped), a typical chat mix.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from fleetserve.autoscaler.simulator.workload import SimRequest


@dataclass(frozen=True)
class InterruptionWave:
    """At ``at``, each spot replica alive then gets a notice with probability ``fraction``;
    notices are spread uniformly over ``spread_s`` and give ``notice_s`` until reclaim."""

    at: float
    fraction: float
    notice_s: float = 120.0
    spread_s: float = 0.0


@dataclass(frozen=True)
class MarketChange:
    at: float
    available: bool
    price_ratio: Optional[float] = None


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: Tuple[SimRequest, ...]
    duration_s: float
    # The stretch the scenario is about (the spike, the storm); metrics are also reported on it.
    focus: Optional[Tuple[float, float]] = None
    waves: Tuple[InterruptionWave, ...] = ()
    market: Tuple[MarketChange, ...] = ()
    description: str = ""
    rate_fn: Optional[Callable[[float], float]] = field(default=None, compare=False, repr=False)


def _lognormal(rng: random.Random, mean: float, sigma: float, lo: int, hi: int) -> int:
    mu = math.log(mean) - sigma * sigma / 2  # so the mean is ``mean``
    return int(min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))))


def poisson_requests(rate_fn: Callable[[float], float], duration_s: float, peak: float, seed: int) -> Tuple[SimRequest, ...]:
    rng = random.Random(seed)
    out: List[SimRequest] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration_s:
            break
        if rng.random() * peak > rate_fn(t):
            continue
        cls = "interactive" if rng.random() < 0.8 else "batch"
        out.append(
            SimRequest(len(out), t, cls, _lognormal(rng, 1000, 0.6, 32, 6000), _lognormal(rng, 300, 0.7, 8, 2000))
        )
    return tuple(out)


def steady(seed: int = 0, rate: float = 10.0, duration_s: float = 1800.0) -> Scenario:
    fn = lambda t: rate  # noqa: E731
    return Scenario("steady", poisson_requests(fn, duration_s, rate, seed), duration_s, description=f"{rate:g} req/s flat", rate_fn=fn)


def spike(seed: int = 0, base: float = 24.0, factor: float = 10.0, duration_s: float = 3600.0,
          start_s: float = 1200.0, ramp_s: float = 60.0, hold_s: float = 600.0) -> Scenario:
    """Base load, then a rise to ``factor`` x base within ``ramp_s``, held, then back down."""
    peak = base * factor

    def fn(t: float) -> float:
        if t < start_s or t >= start_s + 2 * ramp_s + hold_s:
            return base
        if t < start_s + ramp_s:
            return base + (peak - base) * (t - start_s) / ramp_s
        if t < start_s + ramp_s + hold_s:
            return peak
        return peak - (peak - base) * (t - start_s - ramp_s - hold_s) / ramp_s

    return Scenario(
        "spike",
        poisson_requests(fn, duration_s, peak, seed),
        duration_s,
        focus=(start_s, start_s + 2 * ramp_s + hold_s),
        description=f"{base:g} req/s, {factor:g}x within {ramp_s:g}s at t={start_s:g}s for {hold_s:g}s",
        rate_fn=fn,
    )


def business_day(hour: float) -> float:
    """Relative load (peak 1.0) of an API used in business hours: 10% overnight, rising
    07-10h, a lunch dip, falling 17-21h."""
    h = hour % 24

    def smooth(x: float) -> float:  # 0..1 cosine ease
        x = min(1.0, max(0.0, x))
        return (1 - math.cos(math.pi * x)) / 2

    rise = smooth((h - 7) / 3)
    fall = smooth((h - 17) / 4)
    lunch = 0.15 * math.exp(-((h - 12.5) ** 2) / 0.5)
    return 0.1 + 0.9 * (rise - fall) - lunch * (rise - fall)


def diurnal(seed: int = 0, peak: float = 200.0, day_s: float = 7200.0) -> Scenario:
    """One business day compressed into ``day_s`` seconds (ramps get steeper, not easier)."""
    fn = lambda t: peak * business_day(24.0 * t / day_s)  # noqa: E731
    return Scenario(
        "diurnal",
        poisson_requests(fn, day_s, peak, seed),
        day_s,
        description=f"business day, peak {peak:g} req/s, 24h compressed to {day_s:g}s",
        rate_fn=fn,
    )


def spot_storm(seed: int = 0, peak: float = 240.0, day_s: float = 7200.0) -> Scenario:
    """A spot storm while the fleet runs on spot: the business day of :func:`diurnal`
    (peak 240 req/s, so the peak fleet bursts well past an on-demand base and warm pool
    onto spot). At 10h, at the top of the morning ramp, spot capacity disappears and every
    spot replica is reclaimed with a 2-minute notice (notices spread over 3 minutes). Spot
    returns at noon; the fleet regrows on spot after the lunch dip, and at 15h a second
    wave takes half of the spot replicas. Times are in day hours; 1 h = ``day_s / 24``."""
    hour = day_s / 24.0
    fn = lambda t: peak * business_day(t / hour)  # noqa: E731
    first, back, second = 10 * hour, 12 * hour, 15 * hour
    return Scenario(
        "spot-storm",
        poisson_requests(fn, day_s, peak, seed),
        day_s,
        focus=(first, second + 3 * hour),
        waves=(InterruptionWave(first, 1.0, 120.0, 180.0), InterruptionWave(second, 0.5, 120.0, 60.0)),
        market=(MarketChange(first, False), MarketChange(back, True)),
        description=f"business day, peak {peak:g} req/s, 24h in {day_s:g}s; all spot reclaimed at 10h "
        f"(2-min notices), spot back at 12h, half again at 15h",
        rate_fn=fn,
    )


def spot_storm_flat(seed: int = 0, rate: float = 160.0, duration_s: float = 2400.0) -> Scenario:
    """The first spot-storm scenario, kept for comparison: a *flat* load, so static peak
    provisioning is already right-sized (the oracle needs ~98% of its replica-hours) and no
    autoscaler can save much. At t=600s spot capacity disappears and every spot replica is
    reclaimed with a 2-minute notice (spread over 3 minutes); spot returns at t=1500s, and
    a second wave takes half the spot replicas at t=1800s."""
    fn = lambda t: rate  # noqa: E731
    return Scenario(
        "spot-storm-flat",
        poisson_requests(fn, duration_s, rate, seed),
        duration_s,
        focus=(600.0, 2100.0),
        waves=(InterruptionWave(600.0, 1.0, 120.0, 180.0), InterruptionWave(1800.0, 0.5, 120.0, 60.0)),
        market=(MarketChange(600.0, False), MarketChange(1500.0, True)),
        description=f"{rate:g} req/s flat; all spot reclaimed at 600s (2-min notices), spot back at 1500s, half again at 1800s",
        rate_fn=fn,
    )


BUILTIN: Dict[str, Callable[..., Scenario]] = {
    "steady": steady,
    "spike": spike,
    "diurnal": diurnal,
    "spot-storm": spot_storm,
    "spot-storm-flat": spot_storm_flat,
}


def make_scenario(name: str, seed: int = 0, **overrides) -> Scenario:
    try:
        factory = BUILTIN[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(sorted(BUILTIN))}") from None
    return factory(seed=seed, **overrides)
