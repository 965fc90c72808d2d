"""bench/_soak_report.py and bench/_procmem.py: the soak's windows, drift verdicts and the
memory sampler (on this test's own process tree)."""

import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def mods():
    sys.path.insert(0, str(BENCH))  # the bench modules import each other by bare name, as the scripts do
    try:
        import _procmem
        import _soak_report

        yield _soak_report, _procmem
    finally:
        sys.path.remove(str(BENCH))


def req(t, status=200, done=True, stream=True, ttft=0.1, tpot=0.01, e2e=1.0, tokens=8):
    return {"t": t, "status": status, "done": done, "stream": stream, "tokens": tokens, "error": "",
            "ttft": ttft if stream else None, "tpot": tpot if stream else None, "e2e": e2e}


def args(**kw):
    base = dict(window_s=60.0, minutes=3.0, warmup_s=60.0, latency_drift_pct=25.0, memory_drift_pct=5.0)
    return Namespace(**(base | kw))


def test_windows_count_errors_and_late_arrivals(mods):
    report, _ = mods
    rows = report.window_rows([req(1), req(61, status=429, done=False), req(62, done=False), req(179.9), req(181)],
                              60.0, 180.0)
    assert [r["requests"] for r in rows] == [1, 2, 2]  # the arrival after the end counts in the last window
    assert [r["errors"] for r in rows] == [0, 2, 0]
    assert rows[1]["statuses"] == {"429": 1}


def test_latency_drift_compares_first_and_last_window_after_warmup(mods):
    report, _ = mods
    reqs = [req(t, ttft=0.1 * (1 + (t >= 120))) for t in range(0, 180, 2)]
    rows = report.window_rows(reqs, 60.0, 180.0)
    drift = report.latency_drift(rows, 60.0)
    assert drift["ttft_p50_ms"] == pytest.approx(100.0) and drift["tpot_p50_ms"] == 0.0


def test_report_verdicts(mods):
    report, procmem = mods
    flat = procmem.Series(1, "a", t=[-10, 0, 60, 70, 80, 120, 130, 140], rss=[100] * 8, pss=[50] * 8)
    grows = procmem.Series(2, "b", t=flat.t, rss=[100, 100, 100, 100, 100, 110, 110, 110], pss=[None] * 8)
    raw = {"config": {}, "capacity": {"steps": [], "capacity_rps": 1.0}, "offered_rps": 0.8,
           "requests": [req(t) for t in range(0, 180, 5)] + [req(100, status=503, done=False)],
           "memory": {"1": vars(flat), "2": vars(grows)}}
    s = report.report(raw, args())
    assert s["errors"] == 1 and s["verdicts"]["errors_zero"] is False
    drifts = {d["label"]: d for d in s["memory_drift"]}
    assert drifts["a"]["rss_drift_pct"] == 0.0 and drifts["b"]["rss_drift_pct"] == 10.0
    assert drifts["b"]["pss_drift_pct"] is None
    assert s["verdicts"]["memory_flat"] is False and s["verdicts"]["memory_max_drift_pct"] == 10.0
    assert s["verdicts"]["latency_flat"] is True


def test_sampler_sees_children_and_their_memory(mods):
    _, procmem = mods
    import os

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = procmem.TreeSampler(os.getpid(), interval_s=0.05).start()
        deadline = time.monotonic() + 10  # wait on the condition, bounded
        while time.monotonic() < deadline and not (os.getpid() in sampler.series and child.pid in sampler.series
                                                  and len(sampler.series[child.pid].t) >= 2):
            time.sleep(0.05)
        sampler.stop()
    finally:
        child.kill()
        child.wait()
    assert {os.getpid(), child.pid} <= set(sampler.series)
    s = sampler.series[child.pid]
    assert len(s.t) >= 2 and all(r > 0 for r in s.rss) and s.label.startswith("python")


def test_windows_split_ttft_by_tier(mods):
    report, _ = mods
    reqs = [req(t) | {"tier": "premium", "ttft": 0.01} for t in range(0, 60, 2)]
    reqs += [req(t) | {"tier": "batch", "ttft": 2.0} for t in range(1, 60, 2)]
    row = report.window_rows(reqs, 60.0, 60.0)[0]
    assert row["ttft_by_tier_ms"] == {"batch": [2000.0, 2000.0], "premium": [10.0, 10.0]}


def test_fine_series_puts_probes_beside_the_tail_of_each_bucket(mods):
    report, _ = mods
    reqs = [req(t) | {"tier": "batch", "ttft": 0.05} for t in range(0, 30)]
    reqs.append(req(12.5, e2e=20.0) | {"tier": "batch", "ttft": 3.0})  # one slow start in the second bucket
    probes = {"t": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0], "cpu_busy_pct": [50.0] * 6,
              "cpu_steal_pct": [0.0, 0.0, 10.0, 30.0, 0.0, 0.0],
              "metrics": {"vllm:num_requests_waiting": [0, 0, 4, 9, 0, 0],
                          "vllm:num_preemptions": [1, 1, 1, 6, 6, 7],
                          "fleetserve_fleet_preemptions": [None] * 6}}
    rows = report.fine_series(reqs, probes, 10.0, 30.0)
    assert [r["arrivals"] for r in rows] == [10, 11, 10]
    assert rows[1]["ttft_max_ms"] == 3000.0 and rows[1]["batch_ttft_max_ms"] == 3000.0
    assert rows[1]["cpu_steal_pct"] == 20.0 and rows[1]["engine_waiting_max"] == 9
    assert [r["engine_preemptions"] for r in rows] == [0, 5, 1]  # counter increase per bucket
    assert rows[1]["fleet_preemptions"] is None
    assert rows[1]["client_in_flight"] == 1  # the slow request is still open at t=20


def test_attribution_ranks_the_context_of_the_worst_buckets(mods):
    report, _ = mods
    rows = [{"t": 10.0 * i, "arrivals": 10 + (i % 3), "ttft_max_ms": 100.0 + 50 * (i % 5),
             "cpu_steal_pct": float(i % 5), "engine_waiting_max": 0} for i in range(20)]
    att = report.attribution(rows)
    assert att["spearman_vs_ttft_max"]["cpu_steal_pct"]["rho"] == 1.0
    assert "engine_waiting_max" not in att["spearman_vs_ttft_max"]  # constant: no correlation to speak of
    assert att["worst_buckets"][0]["ttft_max_ms"] == 300.0 and len(att["worst_buckets"]) == 10


def test_probe_parser_sums_series_and_skips_foreign_pages():
    sys.path.insert(0, str(BENCH))
    try:
        import _soak_probes as probes
    finally:
        sys.path.remove(str(BENCH))
    page = ('# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{replica="a"} 3.0\n'
            'vllm:num_requests_waiting{replica="b"} 2.0\n# TYPE vllm:num_preemptions counter\n'
            'vllm:num_preemptions_total{replica="a"} 7.0\nvllm:num_preemptions_created{replica="a"} 1.7e9\n')
    out = probes.parse_metrics([page, "<html>not found</html>"])
    assert out["vllm:num_requests_waiting"] == 5.0 and out["vllm:num_preemptions"] == 7.0
    busy, steal = probes.cpu_shares((100, 10, 1000), (160, 30, 1200))
    assert (busy, steal) == (30.0, 10.0)


def test_windows_carry_their_cpu_steal_and_preemptions(mods):
    report, _ = mods
    rows = [{"start_s": 0.0}, {"start_s": 60.0}]
    probes = {"t": [10.0, 30.0, 70.0, 90.0], "cpu_steal_pct": [0.0, 4.0, 30.0, None],
              "metrics": {"vllm:num_preemptions": [0, 2, 2, 9]}}
    report.add_window_context(rows, probes, 60.0)
    assert rows[0]["cpu_steal_mean_pct"] == 2.0 and rows[0]["cpu_steal_max_pct"] == 4.0
    assert rows[1]["cpu_steal_max_pct"] == 30.0 and rows[1]["engine_preemptions"] == 7
