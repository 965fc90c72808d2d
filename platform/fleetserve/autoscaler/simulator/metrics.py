"""What a run produced: SLO attainment, TTFT percentiles, replica-hours, losses, events."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from fleetserve.autoscaler.simulator.config import SimConfig
from fleetserve.autoscaler.simulator.scenarios import Scenario
from fleetserve.autoscaler.snapshot import ReplicaState


def percentile(values: List[float], q: float) -> Optional[float]:
    """Nearest-rank percentile; ``inf`` entries (no first token) count as the worst."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


@dataclass(frozen=True)
class ClassStats:
    requests: int
    ttft_p50_s: Optional[float]
    ttft_p95_s: Optional[float]
    slo_s: float
    attainment: float  # fraction of requests whose first token came within the SLO


@dataclass(frozen=True)
class SimResult:
    policy: str
    scenario: str
    requests: int
    attainment: float
    focus_attainment: Optional[float]  # on requests arriving in the scenario's focus window
    classes: Dict[str, ClassStats]
    lost: int  # never completed: killed on a reclaimed/stopped replica or abandoned in the queue
    retried: int  # migrated to another replica and completed there
    replica_hours_on_demand: float
    replica_hours_spot: float
    standby_hours: float
    standby_cost_factor: float
    cold_starts: int
    cold_starts_spot: int
    activations: int
    drains: int
    interruptions: int
    max_serving_replicas: int
    timeseries: Dict[str, List[float]] = field(default_factory=dict, repr=False)

    @property
    def replica_hours(self) -> float:
        """Serving replica-hours plus standby hours weighted by their cost factor."""
        return self.replica_hours_on_demand + self.replica_hours_spot + self.standby_hours * self.standby_cost_factor

    @property
    def replica_hours_raw(self) -> float:
        """Every replica-hour counted in full, standbys included."""
        return self.replica_hours_on_demand + self.replica_hours_spot + self.standby_hours

    def cost(self, spot_price_ratio: float) -> float:
        """On-demand-replica-hour equivalents: spot at its price, standbys at their factor."""
        return (
            self.replica_hours_on_demand
            + self.replica_hours_spot * spot_price_ratio
            + self.standby_hours * self.standby_cost_factor
        )

    def to_dict(self, spot_price_ratio: float, with_timeseries: bool = False) -> dict:
        d = asdict(self)
        if not with_timeseries:
            d.pop("timeseries")
        d["replica_hours"] = self.replica_hours
        d["replica_hours_raw"] = self.replica_hours_raw
        d["cost"] = self.cost(spot_price_ratio)
        return d


class Recorder:
    """Collects per-request outcomes and a coarse time series during a run."""

    def __init__(self, cfg: SimConfig, scenario: Scenario):
        self.cfg = cfg
        self.scenario = scenario
        self.flights = []
        self.open = 0
        self.retried = 0
        self.max_serving = 0
        self.ts: Dict[str, List[float]] = {k: [] for k in ("t", "rate", "serving", "starting", "standby", "queued")}
        self._next_sample = 0.0

    def arrive(self, flight) -> None:
        self.flights.append(flight)
        self.open += 1

    def finish(self, flight) -> None:
        self.open -= 1

    def all_finished(self) -> bool:
        return self.open == 0

    def sample(self, sim, now: float) -> None:
        fleet = sim.fleet
        self.max_serving = max(self.max_serving, fleet.count(ReplicaState.ACTIVE))
        if now < self._next_sample:
            return
        self._next_sample = now + self.cfg.sample_every_s
        self.ts["t"].append(now)
        self.ts["rate"].append(sim.arrival_rate())
        self.ts["serving"].append(fleet.count(ReplicaState.ACTIVE) + fleet.count(ReplicaState.DRAINING))
        self.ts["starting"].append(fleet.count(ReplicaState.STARTING))
        self.ts["standby"].append(fleet.count(ReplicaState.WARM_STANDBY))
        self.ts["queued"].append(len(fleet.queue))

    def _ttft(self, f) -> float:
        return math.inf if f.first_token_at is None else f.first_token_at - f.req.arrival

    def result(self, policy: str, fleet, now: float) -> SimResult:
        slo = self.cfg.ttft_slo_s
        by_class: Dict[str, List[float]] = {}
        met = 0
        focus: Tuple[int, int] = (0, 0)
        lost = retried = 0
        for f in self.flights:
            ttft = self._ttft(f)
            ok = not f.lost and ttft <= slo.get(f.req.tenant_class, math.inf)
            met += ok
            by_class.setdefault(f.req.tenant_class, []).append(ttft if not f.lost else math.inf)
            lost += f.lost
            retried += (f.retries > 0 and not f.lost)
            w = self.scenario.focus
            if w and w[0] <= f.req.arrival < w[1]:
                focus = (focus[0] + ok, focus[1] + 1)
        classes = {}
        for cls, vals in sorted(by_class.items()):
            s = slo.get(cls, math.inf)
            classes[cls] = ClassStats(
                requests=len(vals),
                ttft_p50_s=percentile(vals, 50),
                ttft_p95_s=percentile(vals, 95),
                slo_s=s,
                attainment=sum(1 for v in vals if v <= s) / len(vals),
            )
        acc = fleet.acc
        n = len(self.flights)
        return SimResult(
            policy=policy,
            scenario=self.scenario.name,
            requests=n,
            attainment=met / n if n else 1.0,
            focus_attainment=(focus[0] / focus[1]) if focus[1] else None,
            classes=classes,
            lost=lost,
            retried=retried,
            replica_hours_on_demand=acc.on_demand_s / 3600.0,
            replica_hours_spot=acc.spot_s / 3600.0,
            standby_hours=acc.standby_s / 3600.0,
            standby_cost_factor=fleet.standby_cost_factor,
            cold_starts=acc.cold_starts,
            cold_starts_spot=acc.cold_starts_spot,
            activations=acc.activations,
            drains=acc.drains,
            interruptions=acc.interruptions,
            max_serving_replicas=self.max_serving,
            timeseries=dict(self.ts),
        )
