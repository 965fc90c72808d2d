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
