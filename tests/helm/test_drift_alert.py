"""The drift alert (issue 22 item 4): FleetserveVersionDrift fires when a version's PSI stays
above 0.2 for 10 minutes, and stays quiet below it or on a short spike (promtool test rules
on the rendered PrometheusRule); the dashboard's drift panel reads the same gauge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helm.conftest import render
from tests.helm.metric_refs import DASHBOARD, rule_groups
from tests.helm.tools import ToolUnavailable, run, system_tool

SERIES = 'fleetserve_drift_psi{model="m", version="v2", feature="prompt_length"}'


@pytest.fixture(scope="module")
def promtool_bin() -> Path:
    try:
        return system_tool("promtool", "apt-get install -y prometheus (Debian's package ships promtool)")
    except ToolUnavailable as exc:
        pytest.skip(str(exc))


def test_drift_alert_fires_above_0_2_only(helm, promtool_bin, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups(render(helm, "default"))}))
    other_replica = 'fleetserve_drift_psi{model="m", version="v2", feature="prompt_length", pod="b"}'
    tests = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [
        {"name": "PSI 0.35 for 20 minutes: drifted", "interval": "1m",
         "input_series": [{"series": SERIES, "values": "0.35x30"}, {"series": other_replica, "values": "0.05x30"}],
         "alert_rule_test": [
             {"eval_time": "5m", "alertname": "FleetserveVersionDrift", "exp_alerts": []},
             {"eval_time": "20m", "alertname": "FleetserveVersionDrift", "exp_alerts": [
                 {"exp_labels": {"severity": "warning", "model": "m", "version": "v2", "feature": "prompt_length"},
                  "exp_annotations": {
                      "summary": "m/v2: prompt_length distribution drifted (PSI 0.35)",
                      "description": "PSI above 0.2 against the baseline window for 10 minutes: a significant shift "
                                     "of this version's prompts or outputs (compare with fleetserve ab report)."}}]}]},
        {"name": "PSI 0.15 (moderate) never alerts", "interval": "1m",
         "input_series": [{"series": SERIES, "values": "0.15x60"}],
         "alert_rule_test": [{"eval_time": "60m", "alertname": "FleetserveVersionDrift", "exp_alerts": []}]},
        {"name": "a 5 minute spike does not alert", "interval": "1m",
         "input_series": [{"series": SERIES, "values": "0.05x10 0.5x5 0.05x30"}],
         "alert_rule_test": [{"eval_time": "14m", "alertname": "FleetserveVersionDrift", "exp_alerts": []},
                             {"eval_time": "30m", "alertname": "FleetserveVersionDrift", "exp_alerts": []}]},
    ]}
    (tmp_path / "drift_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = run([promtool_bin, "test", "rules", "drift_test.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dashboard_has_a_drift_panel_on_the_gauge():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    drift = [p for p in panels if "drift" in p["title"].lower()]
    assert len(drift) == 1 and "fleetserve_drift_psi" in drift[0]["targets"][0]["expr"]
    assert len({p["id"] for p in panels}) == len(panels)
