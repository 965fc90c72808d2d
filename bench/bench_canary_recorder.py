"""The per-request cost of recording a finished request's outcome for the canary (stage 7),
at a base git ref against the working tree, in one run.

Before the cleanup two recorders ran per request: ``canary.outcomes.OutcomeRecorder`` (the
rollout guardrails' step windows, flushed to the canary store every tick) and
``canary.ab_recorder.ABRecorder`` (A/B counters). After it, only the A/B recorder runs and the
guardrails read its totals. Each side runs in its own subprocess over the same workload:

- time per recorded outcome, memory store and a real redis-server (one client, sequential);
- for the old side, the rollout runner's flush (once per ``--tick-every`` requests) is
  included in the time, as it runs on the same event loop;
- Python heap growth (tracemalloc) after the workload, memory store;
- Redis: keys and bytes (``MEMORY USAGE``) the workload left.

    python bench/bench_canary_recorder.py --base 801dd76 --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_results  # noqa: E402


def workload(n: int, seed: int = 7) -> list[tuple[str, str, float, tuple[float, ...]]]:
    """(version, status, ttft, tpots) per request: 10 % canary, 1 % 5xx, 64 tokens each."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        version = "v2" if rng.random() < 0.1 else "v1"
        status = "500" if rng.random() < 0.01 else "200"
        out.append((version, status, rng.lognormvariate(-2.3, 0.4),
                    tuple(rng.lognormvariate(-3.9, 0.3) for _ in range(63))))
    return out


# ---- the side that runs in a subprocess (imports whichever fleetserve is on PYTHONPATH) ----

async def run_side(n: int, redis_url: str | None, tick_every: int, trace: bool) -> dict:
    from fleetserve.canary.ab_recorder import ABRecorder
    from fleetserve.canary.ab_records import RequestOutcome, ServedRequest
    from fleetserve.canary.ab_store import MemoryABStore, RedisABStore

    try:  # the old side: the second recorder and its flush into the canary store
        from fleetserve.canary.outcomes import OutcomeRecorder
        from fleetserve.canary.rollout_store import RolloutStore
        from fleetserve.canary.store import MemoryCanaryStore, RedisCanaryStore
    except ImportError:
        OutcomeRecorder = None
    work = workload(n)
    if trace:
        tracemalloc.start()
    base_mem = tracemalloc.get_traced_memory()[0]
    ab = ABRecorder(RedisABStore.from_url(redis_url) if redis_url else MemoryABStore())
    outcomes = rollouts = None
    if OutcomeRecorder is not None:
        outcomes = OutcomeRecorder(lambda model: "v2/canary/0/1.000", source="bench")
        rollouts = RolloutStore(RedisCanaryStore.from_url(redis_url) if redis_url else MemoryCanaryStore())
    t0 = time.perf_counter()
    for i, (version, status, ttft, tpots) in enumerate(work):
        if outcomes is not None:  # what api.service.account did before
            outcomes.record("m", version, status, ttft, tpots)
            if (i + 1) % tick_every == 0:
                await outcomes.flush(rollouts)
        served = ServedRequest(f"r{i}", "acme", "m", version, 1000.0 + i)
        await ab.record(RequestOutcome(served, error=status.startswith("5"), ttft_s=ttft, tpots=tpots,
                                       prompt_lengths=(40,), output_tokens=64, first_token=5), "v1")
    elapsed = time.perf_counter() - t0
    heap = tracemalloc.get_traced_memory()[0] - base_mem
    tracemalloc.stop()
    out = {"us_per_outcome": elapsed / n * 1e6, "recorders": 2 if outcomes else 1}
    if trace:  # a separate run: tracemalloc slows every allocation
        return {"heap_kib": heap / 1024}
    if redis_url:
        import redis

        r = redis.Redis.from_url(redis_url)
        keys = [k for k in r.scan_iter("fleetserve:*") if b":req:" not in k]
        out["redis_counter_keys"] = len(keys)
        out["redis_counter_bytes"] = sum(r.memory_usage(k) or 0 for k in keys)
        r.close()
    await ab.close()
    return out


# ---- the driver ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def side(platform_dir: Path, n: int, redis_url: str | None, tick_every: int, trace: bool = False) -> dict:
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushall()
    env = {**os.environ, "PYTHONPATH": str(platform_dir)}
    args = [sys.executable, __file__, "--side", "--requests", str(n), "--tick-every", str(tick_every)]
    if redis_url:
        args += ["--redis-url", redis_url]
    if trace:
        args.append("--trace")
    res = subprocess.run(args, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="801dd76", help="git ref of the two-recorder code")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--tick-every", type=int, default=100, help="requests per rollout-runner flush (old side)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs per side; the best time is kept")
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench/results/canary_recorder.json"))
    a = ap.parse_args()
    if a.side:
        print(json.dumps(asyncio.run(run_side(a.requests, a.redis_url, a.tick_every, a.trace))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        git = subprocess.run(["git", "archive", a.base, "platform"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=git.stdout, check=True)
        sides = {"before": Path(tmp) / "platform", "after": ROOT / "platform"}
        proc, url = start_redis()
        try:
            results: dict[str, dict] = {}
            for store, redis_url in (("memory", None), ("redis", url)):
                for _ in range(a.repeats):
                    for name, path in sides.items():
                        r = side(path, a.requests, redis_url, a.tick_every)
                        best = results.setdefault(f"{store}/{name}", r)
                        if r["us_per_outcome"] < best["us_per_outcome"]:
                            results[f"{store}/{name}"] = r
                for name, path in sides.items():
                    results[f"{store}/{name}"].update(side(path, a.requests, redis_url, a.tick_every, trace=True))
        finally:
            proc.terminate()
            proc.wait()
    print(f"{a.requests} outcomes (64 tokens each), best of {a.repeats}; before = {a.base}, after = working tree")
    print(f"{'store':8} {'metric':22} {'before':>10} {'after':>10} {'after/before':>13}")
    for store in ("memory", "redis"):
        b, f = results[f"{store}/before"], results[f"{store}/after"]
        for k in ("us_per_outcome", "heap_kib", "redis_counter_keys", "redis_counter_bytes"):
            if k in b:
                print(f"{store:8} {k:22} {b[k]:10.1f} {f[k]:10.1f} {f[k] / b[k] if b[k] else float('nan'):13.2f}")
    write_results({"requests": a.requests, "tick_every": a.tick_every, "base": a.base, "results": results}, a.out)


if __name__ == "__main__":
    main()
