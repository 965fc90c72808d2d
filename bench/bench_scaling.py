"""Warm activation against a cold start of a model replica, on the tiny and 100m presets.

    python bench/bench_scaling.py [--presets tiny,100m] [--repeats 3]

*Cold start*: construct a ``ModelReplica`` (start the engine process, load the weights,
allocate the KV cache) and stream the first token of a request. *Warm activation*: the same
replica parked in the warm pool (``set_standby(True)``: out of routing, engine asleep, KV
released) is woken (``set_standby(False)``) and streams the first token of the same request.
Both run the replica outside Ray, so Ray's actor scheduling (about 1-2 s here, the same
for both paths' first replica) is left out of the cold start: the ratio is a lower bound.
Prints both side by side with the ratio and writes bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The replica asks Ray for its node id; outside a cluster that must not start one (it would
# be timed as part of the cold start).
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT))

from bench._results import write_results  # noqa: E402


def ensure_checkpoint(cache_dir: Path, preset: str) -> Path:
    from fleetserve.engine.model.tiny import make_tiny_checkpoint

    path = cache_dir / f"llama-{preset}"
    if not (path / "config.json").exists():
        make_tiny_checkpoint(path, preset=preset, arch="llama")
    return path


def model_config(checkpoint: Path, kv_blocks: int) -> dict:
    from fleetserve.config import ModelConfig

    return ModelConfig(name="bench", checkpoint=str(checkpoint), drain_timeout_s=30,
                       engine_args={"num_kv_blocks": kv_blocks, "num_threads": 1}).model_dump(mode="json")


async def first_token(replica, rid: str) -> float:
    from fleetserve.engine.protocol import GenerateRequest
    from fleetserve.engine.sampling_params import SamplingParams

    t0 = time.perf_counter()
    req = GenerateRequest(request_id=rid, prompt="def main(", params=SamplingParams(max_tokens=4, temperature=0))
    gen = replica.generate(req)
    try:
        await gen.__anext__()
    finally:
        await gen.aclose()
    return time.perf_counter() - t0


async def one_preset(checkpoint: Path, kv_blocks: int, repeats: int) -> dict:
    from fleetserve.deployments.replica import ModelReplica

    cold, warm, wake_only = [], [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        replica = ModelReplica.__new__(ModelReplica)
        await replica.__init__(model_config(checkpoint, kv_blocks))
        await first_token(replica, f"cold-{i}")
        cold.append(time.perf_counter() - t0)
        try:
            for j in range(repeats):
                await replica.set_standby(True)
                t1 = time.perf_counter()
                ack = await replica.set_standby(False)
                await first_token(replica, f"warm-{i}-{j}")
                warm.append(time.perf_counter() - t1)
                wake_only.append(ack.seconds)
        finally:
            await replica.__del__()
    return {
        "cold_start_s": cold, "warm_activation_s": warm, "wake_only_s": wake_only,
        "cold_start_median_s": statistics.median(cold), "warm_activation_median_s": statistics.median(warm),
        "speedup": statistics.median(cold) / statistics.median(warm), "kv_blocks": kv_blocks,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,100m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-blocks", type=int, default=512)
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "fleetserve-bench-ckpt"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.json"))
    args = ap.parse_args(argv)
    results = {"presets": {}, "repeats": args.repeats}
    for preset in args.presets.split(","):
        ckpt = ensure_checkpoint(Path(args.cache_dir), preset)
        results["presets"][preset] = asyncio.run(one_preset(ckpt, args.kv_blocks, args.repeats))
    print(f"\n{'preset':<8}{'cold start (s)':>16}{'warm activation (s)':>22}{'wake only (s)':>15}{'speedup':>10}  target >= 10x")
    for preset, r in results["presets"].items():
        verdict = "met" if r["speedup"] >= 10 else "MISSED"
        print(f"{preset:<8}{r['cold_start_median_s']:>16.3f}{r['warm_activation_median_s']:>22.4f}"
              f"{statistics.median(r['wake_only_s']):>15.4f}{r['speedup']:>9.1f}x  {verdict}")
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
