"""What the dashboard and the alert rules read, and what a /metrics exposition offers."""

from __future__ import annotations

import json

from tests.helm.conftest import CHART, render
from tests.helm.promql import metric_names

DASHBOARD = CHART / "files" / "dashboard.json"


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, label)
            exprs.append(var["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0])
    return exprs


def rule_groups(rendered) -> list[dict]:
    return rendered.one("PrometheusRule")["spec"]["groups"]


def rule_metric_names(groups: list[dict]) -> set[str]:
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    return {n for g in groups for r in g["rules"] for n in metric_names(r["expr"])} - recorded


def referenced_metrics(helm) -> set[str]:
    names = {n for e in dashboard_queries() for n in metric_names(e)}
    for values in ("default", "multi-node-spot"):
        names |= rule_metric_names(rule_groups(render(helm, values)))
    return names


def exported_names(exposition: str) -> set[str]:
    """Series names an exposition can contain, from its TYPE lines (present before any sample)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_count", name + "_sum"}
    return names
