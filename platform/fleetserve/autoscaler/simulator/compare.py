"""Run one scenario against fleetserve, Ray Serve's default policy and static peak
provisioning, and present the results side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from fleetserve.autoscaler.config import AutoscalerConfig
from fleetserve.autoscaler.simulator.config import SimConfig
from fleetserve.autoscaler.simulator.controllers import (
    MODEL,
    FleetserveController,
    RayDefaultController,
    StaticController,
    oracle_replica_hours,
)
from fleetserve.autoscaler.simulator.engine import Simulation
from fleetserve.autoscaler.simulator.metrics import SimResult
from fleetserve.autoscaler.simulator.scenarios import Scenario


@dataclass(frozen=True)
class Comparison:
    scenario: Scenario
    profile: str
    results: List[SimResult]  # fleetserve, ray-default, static-peak
    sim: SimConfig
    oracle_replica_hours: float  # perfect demand tracking, minute by minute (a lower bound)

    def by_policy(self, name: str) -> SimResult:
        return next(r for r in self.results if r.policy == name)

    def to_dict(self, with_timeseries: bool = False) -> dict:
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "focus_window_s": self.scenario.focus,
            "profile": self.profile,
            "oracle_replica_hours": self.oracle_replica_hours,
            "results": [r.to_dict(self.sim.spot_price_ratio, with_timeseries) for r in self.results],
        }


def compare(scenario: Scenario, autoscaler: AutoscalerConfig, sim: Optional[SimConfig] = None, seed: int = 0) -> Comparison:
    sim = sim or SimConfig()
    cfg = autoscaler.for_model(MODEL)
    target = cfg.scaling.target_ongoing_per_replica
    controllers = [
        FleetserveController(cfg, name=f"fleetserve:{autoscaler.profile or 'custom'}"),
        # Ray's defaults except the per-replica target, which is set to the same value
        # fleetserve aims for, and the same replica bounds.
        RayDefaultController(cfg.scaling.min_replicas, cfg.scaling.max_replicas, target),
        StaticController(target),
    ]
    results = [Simulation(scenario, c, sim, seed=seed).run() for c in controllers]
    oracle = oracle_replica_hours(scenario, sim, target)
    return Comparison(scenario, autoscaler.profile or "custom", results, sim, oracle)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(comp: Comparison) -> str:
    rows = [
        ("SLO attainment", lambda r: _fmt(100 * r.attainment, ".2f") + "%"),
        ("  in focus window", lambda r: _fmt(None if r.focus_attainment is None else 100 * r.focus_attainment, ".2f") + ("%" if r.focus_attainment is not None else "")),
    ]
    classes = sorted({c for r in comp.results for c in r.classes})
    for c in classes:
        rows.append((f"TTFT p95 {c} (s)", lambda r, c=c: _fmt(r.classes[c].ttft_p95_s if c in r.classes else None, ".3f")))
        rows.append((f"  attainment {c}", lambda r, c=c: _fmt(100 * r.classes[c].attainment if c in r.classes else None, ".2f") + "%"))
    rows += [
        ("replica-hours (effective)", lambda r: _fmt(r.replica_hours, ".2f")),
        ("  on-demand", lambda r: _fmt(r.replica_hours_on_demand, ".2f")),
        ("  spot", lambda r: _fmt(r.replica_hours_spot, ".2f")),
        ("  standby (raw)", lambda r: _fmt(r.standby_hours, ".2f")),
        ("cost (on-demand eq.)", lambda r: _fmt(r.cost(comp.sim.spot_price_ratio), ".2f")),
        ("requests lost", lambda r: str(r.lost)),
        ("requests retried", lambda r: str(r.retried)),
        ("cold starts (spot)", lambda r: f"{r.cold_starts} ({r.cold_starts_spot})"),
        ("warm activations", lambda r: str(r.activations)),
        ("drains", lambda r: str(r.drains)),
        ("spot interruptions", lambda r: str(r.interruptions)),
        ("max serving replicas", lambda r: str(r.max_serving_replicas)),
    ]
    static = comp.by_policy("static-peak")
    def vs_static(hours: float) -> str:
        return _fmt(100 * hours / static.replica_hours if static.replica_hours else None, ".1f") + "%"

    rows.append(("replica-hours vs static", lambda r: vs_static(r.replica_hours)))
    rows.append(("  standby at full cost", lambda r: vs_static(r.replica_hours_raw)))
    names = [r.policy for r in comp.results]
    w0 = max(len(n) for n, _ in rows) + 2
    w = max(14, max(len(n) for n in names) + 2)
    lines = [f"scenario {comp.scenario.name}: {comp.scenario.description} ({comp.results[0].requests} requests)"]
    lines.append("".ljust(w0) + "".join(n.rjust(w) for n in names))
    for label, fn in rows:
        lines.append(label.ljust(w0) + "".join(fn(r).rjust(w) for r in comp.results))
    lines.append(
        f"oracle (capacity tracks demand minute by minute): {comp.oracle_replica_hours:.2f} replica-hours"
        f" = {vs_static(comp.oracle_replica_hours)} of static peak"
    )
    return "\n".join(lines)


def plot(comps: List[Comparison], path: str) -> Optional[str]:
    """Write a PNG of serving replicas and arrival rate over time; returns a message if
    matplotlib is not installed (it is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: skipped the plot (pip install 'fleetserve[plot]')"
    fig, axes = plt.subplots(len(comps), 1, figsize=(10, 3.2 * len(comps)), squeeze=False)
    for ax, comp in zip(axes[:, 0], comps):
        for r in comp.results:
            ax.plot([t / 60 for t in r.timeseries["t"]], r.timeseries["serving"], label=r.policy)
        ax2 = ax.twinx()
        first = comp.results[0].timeseries
        ax2.plot([t / 60 for t in first["t"]], first["rate"], color="grey", alpha=0.4, label="arrivals/s")
        ax.set_title(comp.scenario.name)
        ax.set_xlabel("minutes")
        ax.set_ylabel("serving replicas")
        ax2.set_ylabel("req/s")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return None
