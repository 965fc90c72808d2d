"""A recorded A/B experiment through the real request path, in process (no Ray): the report in
docs/rollouts.md ("A/B tests") comes from this script.

Two versions of one model split 50/50 by the sticky hash of the OpenAI ``user`` field; a
scripted stream stage answers v2 a little slower and with longer outputs. Each user's
response gets feedback through ``POST /v1/feedback`` (v1 positive with p = 0.30, v2 with
p = 0.34, seeded), then ``GET /admin/ab/tiny`` reports, printed as ``fleetserve ab report``
prints it. Run: ``PYTHONPATH=platform python bench/ab_example.py [--users 1500] [--mde 0.05]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from pathlib import Path

import httpx

from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.canary.ab_config import DriftMonitorConfig
from fleetserve.canary.ab_recorder import ABRecorder
from fleetserve.canary.ab_store import MemoryABStore
from fleetserve.canary.drift_monitor import DriftMonitor
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.serving import VersionTable
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.canary.versions import make_version
from fleetserve.cli.ab import format_report
from fleetserve.engine.model.tiny import make_tiny_checkpoint
from fleetserve.engine.protocol import ModelInfo, RequestOutput
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.config import TenantsConfig, TenantSpec
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from fleetserve.tenants.keys import hash_api_key

MODEL, KEY, ADMIN = "tiny", "fs-example-key", "fs-example-admin"
POSITIVE = {"v1": 0.30, "v2": 0.34}


class TwoVersions:
    """v1: 6 tokens, 2 ms apart; v2 (routed as ``tiny@v2``): 10 tokens, 3 ms apart, other first token."""

    async def generate(self, request, route):
        v2 = route.model.endswith("@v2")
        n, gap, first = (10, 0.003, 7) if v2 else (6, 0.002, 5)
        for i in range(n):
            await asyncio.sleep(gap)
            yield RequestOutput(request.request_id, "ab"[i % 2], [first + i], finished=i == n - 1,
                                finish_reason="length" if i == n - 1 else None, completion_tokens=i + 1)

    async def model_info(self, model):
        return ModelInfo(name=MODEL, max_model_len=256, vocab_size=512, eos_token_ids=[0], has_chat_template=True)


async def build(checkpoint: Path):
    reg = VersionRegistry(MemoryCanaryStore())
    for vid in ("v1", "v2"):
        await reg.register(make_version(MODEL, vid, checkpoint))
    await reg.set_weights(MODEL, {"v1": 1, "v2": 1})
    metrics = FleetMetrics()
    gk = TenantGatekeeper(TenantsConfig(tenants=[TenantSpec(id="acme", api_key_hashes=[hash_api_key(KEY)])],
                                        admin_key_hash=hash_api_key(ADMIN)), metrics_registry=metrics.registry)
    drift = DriftMonitor(DriftMonitorConfig(baseline_size=300, window_size=1000, min_samples=100))
    ab = ABRecorder(MemoryABStore(), metrics=metrics, drift=drift)
    service = InferenceService([ModelSpec(MODEL, str(checkpoint))], TwoVersions(), gk, metrics=metrics,
                               versions=VersionTable({MODEL: "v1"}, reg), ab=ab)
    return build_rest_app(service)


async def one_user(http, i: int, rng: random.Random, sem: asyncio.Semaphore) -> None:
    async with sem:
        words = " ".join(["hello"] * rng.randint(1, 40))
        r = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                            json={"model": MODEL, "user": f"user-{i}", "max_tokens": 16,
                                  "messages": [{"role": "user", "content": words}]})
        r.raise_for_status()
        version = r.headers["x-fleetserve-version"].split("@")[1]
        fb = await http.post("/v1/feedback", headers={"Authorization": f"Bearer {KEY}"},
                             json={"id": r.json()["id"], "outcome": rng.random() < POSITIVE[version]})
        fb.raise_for_status()


async def main(users: int, seed: int, mde: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = await build(make_tiny_checkpoint(Path(tmp) / "tiny"))
        rng, sem = random.Random(seed), asyncio.Semaphore(16)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fleetserve") as http:
            await asyncio.gather(*(one_user(http, i, rng, sem) for i in range(users)))
            report = (await http.get(f"/admin/ab/{MODEL}", params={"mde": mde},
                                     headers={"Authorization": f"Bearer {ADMIN}"})).json()
    print(format_report(report))
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/ab_example.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--mde", type=float, default=0.05, help="Minimum detectable effect for the report.")
    args = p.parse_args()
    asyncio.run(main(args.users, args.seed, args.mde))
