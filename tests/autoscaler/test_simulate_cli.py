import json

from fleetserve.autoscaler.simulator.scenarios import make_scenario
from fleetserve.autoscaler.simulator.workload import write_trace_csv
from fleetserve.cli.main import main

from tests.autoscaler.test_config import PROFILES


def test_simulate_trace_prints_table_and_writes_json(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    write_trace_csv(make_scenario("steady", seed=0, rate=5.0, duration_s=60.0).requests, trace)
    out = tmp_path / "out.json"
    rc = main(["simulate", "--trace", str(trace), "--profile", str(PROFILES / "balanced.yaml"),
               "--json", str(out), "--plot", str(tmp_path / "p.png")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ray-default" in text and "static-peak" in text
    data = json.loads(out.read_text())
    assert [r["policy"] for r in data["results"]] == ["fleetserve:balanced", "ray-default", "static-peak"]
    assert "matplotlib" in text or (tmp_path / "p.png").exists()


def test_simulate_rejects_a_bad_profile(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {scaling: {nope: 1}}\n")
    assert main(["simulate", "--scenario", "steady", "--profile", str(bad)]) == 2
    assert "autoscaler.defaults.scaling.nope" in capsys.readouterr().err
