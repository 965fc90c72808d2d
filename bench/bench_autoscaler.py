"""Autoscaler benchmark: the balanced profile against Ray Serve's default policy and
static peak provisioning on the 10x-spike, diurnal and spot-storm scenarios, in one run.

``spot-storm-flat`` (the first spot-storm: a flat load) is run and reported as well, but
it is not an acceptance scenario: static peak is already right-sized for a flat load (the
oracle needs ~98% of its replica-hours), so its <=60% target cannot be met by any policy.

    python bench/bench_autoscaler.py [--profile autoscaler/balanced.yaml] [--seed 0]

Prints one table per scenario plus the acceptance checks, and writes
bench/results/autoscaler.json. Everything is simulated and seeded: same seed, same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fleetserve.autoscaler.config import load_autoscaler_config
from fleetserve.autoscaler.simulator.compare import compare, format_table, plot
from fleetserve.autoscaler.simulator.config import SimConfig
from fleetserve.autoscaler.simulator.scenarios import make_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("spike", "diurnal", "spot-storm")
# Reported for the record, not judged against the <=60% target (see the module docstring).
REFERENCE_SCENARIOS = ("spot-storm-flat",)


def checks(comps) -> list:
    out = []
    for comp in comps:
        f, ray, static = comp.results
        gap_pp = 100 * (static.attainment - f.attainment)
        ratio = f.replica_hours / static.replica_hours
        out.append({
            "scenario": comp.scenario.name,
            "slo_ours_pct": round(100 * f.attainment, 3),
            "slo_ray_default_pct": round(100 * ray.attainment, 3),
            "slo_static_pct": round(100 * static.attainment, 3),
            "slo_gap_vs_static_pp": round(gap_pp, 3),
            "replica_hours_vs_static": round(ratio, 3),
            "replica_hours_raw_vs_static": round(f.replica_hours_raw / static.replica_hours, 3),
            "ray_default_hours_vs_static": round(ray.replica_hours / static.replica_hours, 3),
            "oracle_hours_vs_static": round(comp.oracle_replica_hours / static.replica_hours, 3),
            "static_replicas": static.max_serving_replicas,
            "lost": f.lost,
            "target_slo_within_1pp_at_60pct_hours": gap_pp <= 1.0 and ratio <= 0.60,
            "acceptance_scenario": comp.scenario.name not in REFERENCE_SCENARIOS,
        })
        if comp.scenario.name == "spike":
            out[-1]["beats_ray_default_in_spike"] = (f.focus_attainment or 0) > (ray.focus_attainment or 0)
        if comp.scenario.name.startswith("spot-storm"):
            out[-1]["zero_lost_in_spot_storm"] = f.lost == 0
    return out


def summary(results: list) -> str:
    """One line per scenario: the numbers the acceptance targets are about."""
    head = (f"{'scenario':<16}{'SLO ours':>10}{'Ray dflt':>10}{'static':>10}{'hours eff':>11}"
            f"{'hours raw':>11}{'Ray hours':>11}{'oracle':>9}{'static n':>10}{'lost':>6}  target")
    lines = [head]
    for c in results:
        verdict = "met" if c["target_slo_within_1pp_at_60pct_hours"] else "MISSED"
        if not c["acceptance_scenario"]:
            verdict = f"reference only (flat load: oracle {100 * c['oracle_hours_vs_static']:.1f}% of static)"
        lines.append(
            f"{c['scenario']:<16}{c['slo_ours_pct']:>9.2f}%{c['slo_ray_default_pct']:>9.2f}%{c['slo_static_pct']:>9.2f}%"
            f"{100 * c['replica_hours_vs_static']:>10.1f}%{100 * c['replica_hours_raw_vs_static']:>10.1f}%"
            f"{100 * c['ray_default_hours_vs_static']:>10.1f}%{100 * c['oracle_hours_vs_static']:>8.1f}%"
            f"{c['static_replicas']:>10}{c['lost']:>6}  {verdict}"
        )
    lines.append("hours: replica-hours as % of static peak; eff = standbys at the profile's cost factor, "
                 "raw = standbys at full cost; oracle = perfect minute-by-minute tracking (lower bound).")
    return "\n".join(lines)


def measured_sim_config(path: str, preset: str) -> SimConfig:
    """The simulator's GPU replica with the warm-activation time scaled from a measurement.

    What transfers from a CPU box to a GPU fleet is the *ratio* cold start / activation, not
    the seconds: a GPU cold start (120 s: pod on a live node, 16 GB of weights from a node
    cache, engine init, CUDA graphs) is dominated by weight loading, which this box's tiny
    checkpoints barely have. So: keep the 120 s cold start and set activation = 120 s over the
    measured ratio, taking the *slowest* activation measured against the median cold start
    (a conservative ratio: contention on this shared 2-core box spreads activations widely).
    """
    data = json.loads(Path(path).read_text())["presets"][preset]
    ratio = data["cold_start_median_s"] / max(data["warm_activation_s"])
    base = SimConfig()
    return SimConfig(cold_start_s=base.cold_start_s, activation_s=round(base.cold_start_s / ratio, 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "autoscaler" / "balanced.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "autoscaler.json"))
    ap.add_argument("--plot", default=None, help="PNG path (needs matplotlib)")
    ap.add_argument("--measured", default=None,
                    help="bench/results/scaling.json: take the warm-activation time from the measured ratio "
                         "(see measured_sim_config)")
    ap.add_argument("--measured-preset", default="100m", help="preset of --measured whose ratio is used")
    args = ap.parse_args(argv)
    profile = load_autoscaler_config(args.profile)
    sim = SimConfig() if args.measured is None else measured_sim_config(args.measured, args.measured_preset)
    print(f"sim: cold start {sim.cold_start_s:.1f} s, warm activation {sim.activation_s:.2f} s")
    comps = [compare(make_scenario(name, seed=args.seed), profile, sim, seed=args.seed) for name in SCENARIOS + REFERENCE_SCENARIOS]
    for comp in comps:
        print(format_table(comp))
        print()
    results = checks(comps)
    print(summary(results))
    for c in results:
        print(json.dumps(c))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "profile": args.profile,
        "seed": args.seed,
        "standby_cost_factor": profile.defaults.warm_pool.cost_factor,
        "measured": args.measured,
        "sim": {"cold_start_s": sim.cold_start_s, "activation_s": sim.activation_s, "slots": sim.slots,
                "ttft_slo_s": sim.ttft_slo_s, "spot_price_ratio": sim.spot_price_ratio},
        "scenarios": [c.to_dict() for c in comps],
        "checks": results,
    }, indent=2, default=str))
    print(f"wrote {args.out}")
    if args.plot:
        print(plot(comps, args.plot) or f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
