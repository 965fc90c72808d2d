"""``fleetserve ab report MODEL [--json]``: the A/B report of a model's versions, from the
admin API (``GET /admin/ab/{model}``): per variant traffic, errors, latency percentiles and
feedback; each treatment against the control (two-proportion z-test, confidence interval);
the sample size per arm and how much longer the experiment must run; drift (PSI) per version.
"""

from __future__ import annotations

import json as jsonlib
from typing import Annotated, Optional

import typer
from rich.table import Table

from fleetserve.cli.console import make_table, render_plain, stdout_console
from fleetserve.cli.tenants import DEFAULT_URL, AdminKey, Json, Url, admin_request

app = typer.Typer(help="A/B analysis of model versions (admin API).", no_args_is_help=True)

VARIANT_HEADER = ("VERSION", "REQUESTS", "ERRORS", "TTFT P50", "TTFT P95", "TTFT P99", "TPOT P50", "TPOT P95",
                  "FEEDBACK/REQ", "POSITIVE", "MEAN SCORE")
COMPARE_HEADER = ("TREATMENT", "VS", "DIFF", "CI", "Z", "P", "VERDICT", "NEED/ARM", "HAVE/ARM", "MORE", "ETA")


def _ms(x: Optional[float]) -> str:
    return "-" if x is None else f"{1000 * x:.1f}ms"


def _pct(x: Optional[float], signed: bool = False) -> str:
    return "-" if x is None else (f"{100 * x:+.2f}%" if signed else f"{100 * x:.2f}%")


def duration(seconds: Optional[float]) -> str:
    """``3343 s`` -> ``55.7m``; None (no rate yet) -> ``-``."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def variant_table(report: dict) -> Table:
    rows = []
    for v in report["variants"]:
        ttft, tpot = v["ttft_s"], v["tpot_s"]
        positive = "-" if v["positive_rate"] is None else f"{100 * v['positive_rate']:.2f}% ({v['positive']})"
        mean = "-" if v["numeric_mean"] is None else f"{v['numeric_mean']:.4g} (n={v['numeric_feedback']})"
        rows.append((v["version"], v["requests"], f"{v['errors']} ({_pct(v['error_rate'])})", _ms(ttft["p50"]),
                     _ms(ttft["p95"]), _ms(ttft["p99"]), _ms(tpot["p50"]), _ms(tpot["p95"]),
                     f"{v['feedback']} ({_pct(v['feedback_rate'])})", positive, mean))
    return make_table(VARIANT_HEADER, rows)


def comparison_table(report: dict) -> Table:
    rows = []
    for c in report["comparisons"]:
        ci = "-" if c["ci_low"] is None else f"[{_pct(c['ci_low'], True)}, {_pct(c['ci_high'], True)}]"
        verdict = "no feedback" if c["z"] is None else ("significant" if c["significant"] else "not significant")
        rows.append((c["treatment"], c["control"], _pct(c["diff"], True), ci,
                     "-" if c["z"] is None else f"{c['z']:.3f}", "-" if c["p_value"] is None else f"{c['p_value']:.4f}",
                     verdict, c["required_per_arm"], c["have_per_arm"], c["remaining_per_arm"], duration(c["eta_s"])))
    return make_table(COMPARE_HEADER, rows)


def drift_table(report: dict) -> Table:
    features = ("prompt_length", "output_length", "first_token")
    rows = [(d["version"], d["samples"], *("-" if f not in d["psi"] else f"{d['psi'][f]:.4f}" for f in features))
            for d in report.get("drift", [])]
    return make_table(("VERSION", "SAMPLES", "PSI PROMPT LEN", "PSI OUTPUT LEN", "PSI FIRST TOKEN"), rows)


def format_report(report: dict) -> str:
    """The whole report as plain text (what the rich tables print, without colour)."""
    parts = [f"A/B report: {report['model']} (control {report['control']}; alpha={report['alpha']}, "
             f"power={report['power']}, MDE={100 * report['mde']:.2f} points of positive-feedback rate)",
             render_plain(variant_table(report))]
    if report["comparisons"]:
        parts += ["", render_plain(comparison_table(report))]
    if report.get("drift"):
        parts += ["", "Drift against the baseline window (> 0.2: significant shift):", render_plain(drift_table(report))]
    return "\n".join(parts)


@app.command("report")
def report(model: Annotated[str, typer.Argument(help="Model alias.")],
           alpha: Annotated[Optional[float], typer.Option(help="Significance level (default: canary.ab.alpha).")] = None,
           power: Annotated[Optional[float], typer.Option(help="Power for the sample size (default: canary.ab.power).")] = None,
           mde: Annotated[Optional[float], typer.Option(help="Minimum detectable effect, absolute (default: canary.ab.mde).")] = None,
           control: Annotated[Optional[str], typer.Option(help="Control version (default: the stable one).")] = None,
           url: Url = DEFAULT_URL, admin_key: AdminKey = None, json: Json = False) -> int:
    """Per-variant counts, error rate, TTFT/TPOT percentiles, feedback, z-test and sample size."""
    params = {k: v for k, v in (("alpha", alpha), ("power", power), ("mde", mde), ("control", control)) if v is not None}
    body = admin_request(url, admin_key, "GET", f"/admin/ab/{model}", params=params)
    if json:
        print(jsonlib.dumps(body, indent=2))
        return 0
    console = stdout_console()
    console.print(format_report(body).split("\n", 1)[0])
    console.print(variant_table(body))
    if body["comparisons"]:
        console.print(comparison_table(body))
    if body.get("drift"):
        console.print("Drift against the baseline window (> 0.2: significant shift):")
        console.print(drift_table(body))
    return 0
