"""`fleetserve ab report` against the real REST app served over HTTP (uvicorn on loopback)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from fleetserve.cli.ab import duration
from fleetserve.cli.main import main
from tests.api.rest_harness import ADMIN_KEY, MODEL
from tests.api.test_feedback import make_ab_rest
from tests.tenants.admin_server import serve_asgi as serve


@pytest.fixture
def url(tiny_llama_path, monkeypatch):
    monkeypatch.setenv("FLEETSERVE_ADMIN_KEY", ADMIN_KEY)
    rest = make_ab_rest(tiny_llama_path)
    store = rest.service.ab.store
    now = time.time()
    # OpenIntro's CPR example as feedback (control 11/50, treatment 14/40), plus traffic.
    asyncio.run(store.add(MODEL, "v1", {"requests": 500, "errors": 5, "ttft:3": 500, "fb_binary": 50,
                                        "fb_positive": 11}, now - 3600))
    asyncio.run(store.add(MODEL, "v2", {"requests": 400, "errors": 2, "ttft:5": 400, "fb_binary": 40,
                                        "fb_positive": 14}, now - 3600))
    with serve(rest.app) as u:
        yield u


def test_report_table(url, capsys):
    assert main(["ab", "report", MODEL, "--url", url]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"A/B report: {MODEL} (control v1; alpha=0.05")
    v1 = next(line.split() for line in lines if line.startswith("v1 "))
    assert v1[:4] == ["v1", "500", "5", "(1.00%)"]
    cmp_row = next(line for line in lines if line.startswith("v2 ") and "significant" in line)
    assert "+13.00%" in cmp_row and "[-5.72%, +31.72%]" in cmp_row and "not significant" in cmp_row


def test_report_json_and_overrides(url, capsys):
    assert main(["ab", "report", MODEL, "--json", "--mde", "0.1", "--url", url]) == 0
    body = json.loads(capsys.readouterr().out)
    c = body["comparisons"][0]
    assert body["mde"] == 0.1 and c["baseline_rate"] == pytest.approx(0.22)
    # By hand: p = 0.22 + 0.1 / 2 = 0.27, n = 15.6978 * 0.27 * 0.73 / 0.1^2 = 309.4 -> 310 per arm.
    assert c["required_per_arm"] == 310
    assert c["remaining_per_arm"] == c["required_per_arm"] - 40 and c["eta_s"] > 0


def test_errors_are_one_line(url, capsys):
    assert main(["ab", "report", "nope", "--url", url]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["ab", "report", MODEL, "--alpha", "2", "--url", url]) == 1
    assert "HTTP 400" in capsys.readouterr().err


def test_duration():
    assert [duration(None), duration(5), duration(90), duration(7200), duration(3 * 86400)] == ["-", "5s", "1.5m", "2.0h", "3.0d"]
