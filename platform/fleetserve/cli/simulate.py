"""``fleetserve simulate``: replay a trace or a built-in scenario against an autoscaling
profile, Ray Serve's default policy and static peak provisioning."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="Compare autoscaling policies on a trace (simulated fleet).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help="CSV with columns timestamp,tenant_class,prompt_tokens,output_tokens")
    src.add_argument("--scenario", help="built-in scenario: steady, spike, diurnal, spot-storm, spot-storm-flat")
    p.add_argument("--profile", required=True, help="autoscaler profile YAML (e.g. autoscaler/balanced.yaml)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (scenario generation, spot interruptions)")
    p.add_argument("--capacity-curve", help="replica capacity curve JSON (default: built-in 8B-on-H100 curve)")
    p.add_argument("--json", dest="json_out", help="write results as JSON here")
    p.add_argument("--plot", help="write a PNG of replicas over time here (needs matplotlib)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fleetserve.autoscaler.config import load_autoscaler_config
    from fleetserve.autoscaler.simulator.capacity_curve import load_curve_json
    from fleetserve.autoscaler.simulator.compare import compare, format_table, plot
    from fleetserve.autoscaler.simulator.config import SimConfig
    from fleetserve.autoscaler.simulator.scenarios import Scenario, make_scenario
    from fleetserve.autoscaler.simulator.workload import load_trace_csv
    from fleetserve.errors import ConfigError

    try:
        profile = load_autoscaler_config(args.profile)
        sim = SimConfig()
        if args.capacity_curve:
            sim = replace(sim, curve=load_curve_json(args.capacity_curve))
        if args.trace:
            reqs = tuple(load_trace_csv(args.trace))
            duration = (reqs[-1].arrival if reqs else 0.0) + 1.0
            scenario = Scenario(Path(args.trace).stem, reqs, duration, description=f"trace {args.trace}")
        else:
            scenario = make_scenario(args.scenario, seed=args.seed)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    comp = compare(scenario, profile, sim, seed=args.seed)
    print(format_table(comp))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(comp.to_dict(), indent=2, default=str))
        print(f"wrote {args.json_out}")
    if args.plot:
        msg = plot([comp], args.plot)
        print(msg or f"wrote {args.plot}")
    return 0
