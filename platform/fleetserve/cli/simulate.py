"""``fleetserve simulate``: replay a trace or a built-in scenario against an autoscaling
profile, Ray Serve's default policy and static peak provisioning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fleetserve.cli.errors import CLIError


def simulate(
    trace: Optional[str] = typer.Option(None, help="CSV with columns timestamp,tenant_class,prompt_tokens,output_tokens (or --scenario)"),
    scenario: Optional[str] = typer.Option(None, help="built-in scenario: steady, spike, diurnal, spot-storm, spot-storm-flat"),
    profile: str = typer.Option(..., help="autoscaler profile YAML (e.g. autoscaler/balanced.yaml)"),
    seed: int = typer.Option(0, help="RNG seed (scenario generation, spot interruptions)"),
    capacity_curve: Optional[str] = typer.Option(None, help="replica capacity curve JSON (default: built-in 8B-on-H100 curve)"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write results as JSON here"),
    plot: Optional[str] = typer.Option(None, help="write a PNG of replicas over time here (needs matplotlib)"),
) -> int:
    """Compare autoscaling policies on a trace (simulated fleet)."""
    if (trace is None) == (scenario is None):
        raise typer.BadParameter("give exactly one of --trace and --scenario", param_hint="'--trace' / '--scenario'")
    from fleetserve.autoscaler.simulator.compare import compare, format_table
    from fleetserve.autoscaler.simulator.compare import plot as plot_replicas

    profile_cfg, sim, scen = _load_inputs(trace, scenario, profile, seed, capacity_curve)
    comp = compare(scen, profile_cfg, sim, seed=seed)
    print(format_table(comp))
    if json_out:
        Path(json_out).write_text(json.dumps(comp.to_dict(), indent=2, default=str))
        print(f"wrote {json_out}")
    if plot:
        msg = plot_replicas([comp], plot)
        print(msg or f"wrote {plot}")
    return 0


def _load_inputs(trace: Optional[str], scenario: Optional[str], profile: str, seed: int, capacity_curve: Optional[str]):
    """(profile, SimConfig, Scenario); a bad file or name is a usage error (exit code 2)."""
    from dataclasses import replace

    from fleetserve.autoscaler.config import load_autoscaler_config
    from fleetserve.autoscaler.simulator.capacity_curve import load_curve_json
    from fleetserve.autoscaler.simulator.config import SimConfig
    from fleetserve.autoscaler.simulator.scenarios import Scenario, make_scenario
    from fleetserve.autoscaler.simulator.workload import load_trace_csv
    from fleetserve.errors import ConfigError

    try:
        profile_cfg = load_autoscaler_config(profile)
        sim = SimConfig()
        if capacity_curve:
            sim = replace(sim, curve=load_curve_json(capacity_curve))
        if trace:
            reqs = tuple(load_trace_csv(trace))
            duration = (reqs[-1].arrival if reqs else 0.0) + 1.0
            return profile_cfg, sim, Scenario(Path(trace).stem, reqs, duration, description=f"trace {trace}")
        return profile_cfg, sim, make_scenario(scenario, seed=seed)
    except (ConfigError, ValueError, OSError) as exc:
        raise CLIError(str(exc), 2) from exc
