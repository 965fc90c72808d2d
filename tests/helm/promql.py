"""Metric names referenced by PromQL expressions (dashboard panels, alert rules)."""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VAR = re.compile(r"\$\{?\w+\}?")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """Every selector's metric name in ``expr`` (function names, labels and keywords excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    text = _GRAFANA_VAR.sub("", text)
    return {m for m in _IDENT.findall(text) if m not in _KEYWORDS}


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as plain PromQL (Grafana's variables replaced by something valid)."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return _GRAFANA_VAR.sub(".*", expr)
