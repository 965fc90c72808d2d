"""``fleetserve rollout start|status|pause|resume|promote|rollback MODEL``: guarded rollouts
over the admin REST API, with ``--json`` for scripts and ``status --watch`` for a live view."""

from __future__ import annotations

import json as jsonlib
import time
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.text import Text

from fleetserve.cli.console import make_table, stdout_console
from fleetserve.cli.errors import CLIError
from fleetserve.cli.tenants import DEFAULT_URL, AdminKey, Json, Url, admin_request

app = typer.Typer(help="Guarded canary rollouts of a new model version (admin API).", no_args_is_help=True)

Model = Annotated[str, typer.Argument(help="Served model name.")]
FINISHED = ("promoted", "rolled_back", "blocked")
UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` -> seconds."""
    t = text.strip().lower()
    try:
        return float(t[:-1]) * UNITS[t[-1]] if t and t[-1] in UNITS else float(t)
    except ValueError:
        raise CLIError(f"--interval must be a duration like 30s, 10m or 1h, got {text!r}", 2) from None


def parse_steps(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CLIError(f"--steps must be comma-separated percentages like 1,5,25,50,100, got {text!r}", 2) from None


def render(st: dict):
    """The status as rich renderables: a header line, step progress, both arms, recent decisions."""
    step = st.get("step")
    head = Text(f"{st['model']}: {st['canary']} vs {st['stable']}  phase={st['phase']}", style="bold")
    if st.get("paused_from"):
        head.append(f" (from {st['paused_from']})")
    parts = [head]
    n = len(st["steps"])
    done = (step["index"] - 1) if step else 0
    if st["phase"] == "promoted":
        done = n
    bar = ProgressBar(total=n, completed=done, width=40)
    label = f"step {step['index']}/{n} ({step['percent']:g}%)" if step else f"steps {','.join(f'{s:g}' for s in st['steps'])}"
    parts += [bar, Text(f"{label}  held {st['held_s']:.0f}s of {st['step_interval_s']:g}s, "
                        f"min sample {st['min_sample_per_step']}  weights {st['weights']}")]
    if st.get("window"):
        rows = [(arm, str(w["requests"]), str(w["errors"]), _ms(w["ttft_p95_s"]), _ms(w["tpot_p95_s"]))
                for arm, w in (("stable", st["window"]["stable"]), ("canary", st["window"]["canary"]))]
        parts.append(make_table(("arm", "requests", "errors", "ttft p95", "tpot p95"), rows))
    if st.get("reason"):
        parts.append(Text(f"reason: {st['reason']}"))
    rows = [(time.strftime("%H:%M:%S", time.localtime(d["at"])), d["event"] or "", d.get("reason") or "")
            for d in st.get("decisions", [])[-8:]]
    parts.append(make_table(("time", "event", "reason"), rows))
    return Group(*parts)


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{1000 * v:.1f}ms"


def _show(st: dict, json: bool) -> None:
    if json:
        print(jsonlib.dumps(st, indent=2))
    else:
        stdout_console().print(render(st))


@app.command("start")
def start(model: Model, version: Annotated[str, typer.Option("--version", help="Version id to roll out.")],
          checkpoint: Annotated[Optional[str], typer.Option(help="Checkpoint (registers a new version).")] = None,
          steps: Annotated[Optional[str], typer.Option(help="Canary percentages, e.g. 1,5,25,50,100.")] = None,
          interval: Annotated[Optional[str], typer.Option(help="Hold per step, e.g. 10m.")] = None,
          min_sample: Annotated[Optional[int], typer.Option(help="Requests per arm before a verdict.")] = None,
          url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Start a guarded rollout of VERSION (warm-up, health check, then the steps)."""
    body: dict = {"version": version}
    if checkpoint:
        body["checkpoint"] = checkpoint
    if steps:
        body["steps"] = parse_steps(steps)
    if interval:
        body["interval_s"] = parse_duration(interval)
    if min_sample is not None:
        body["min_sample"] = min_sample
    _show(admin_request(url, admin_key, "POST", f"/admin/models/{model}/rollout", json=body), json)
    return 0


@app.command("status")
def status(model: Model, watch: Annotated[bool, typer.Option("--watch", help="Refresh live until it finishes.")] = False,
           every: Annotated[float, typer.Option(help="Refresh period with --watch (s).")] = 2.0,
           url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Show the rollout: phase, step, split, both arms' window and recent decisions."""
    st = admin_request(url, admin_key, "GET", f"/admin/models/{model}/rollout")
    if not watch or json:
        _show(st, json)
        return 0
    from rich.live import Live

    with Live(render(st), console=stdout_console(), refresh_per_second=4) as live:
        while st["phase"] not in FINISHED:
            time.sleep(every)  # the watch's refresh period
            st = admin_request(url, admin_key, "GET", f"/admin/models/{model}/rollout")
            live.update(render(st))
    return 0 if st["phase"] == "promoted" else 1


def _command(name: str):
    def run(model: Model, url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
        st = admin_request(url, admin_key, "POST", f"/admin/models/{model}/rollout/{name}")
        _show(st, json)
        return 0

    run.__doc__ = {"pause": "Hold the current split (a breach still rolls back).",
                   "resume": "Resume a paused rollout (its step's window and hold restart).",
                   "promote": "Promote the canary now (only while it serves).",
                   "rollback": "Roll back now: all traffic to stable, the canary drained."}[name]
    return run


for _name in ("pause", "resume", "promote", "rollback"):
    app.command(_name)(_command(_name))
