"""The native engine's resident memory under traffic of ever-new step sizes, side by side.

Each oneDNN input shape costs the process ~0.6 MB that it keeps (see
``fleetserve.engine.model.cpu_linear``); a serving step's row count is its token count, so
before the row buckets an engine's RSS grew for as long as traffic produced new step sizes
(the 30-minute soak: +2.6 MiB a minute). This script runs one synchronous ``LLMEngine`` (the
tiny model, CPU, one thread; no Ray, no child process) per build in a subprocess, on the
same seeded traffic: up to 20 requests in flight, prompt lengths uniform in 1..300 tokens,
1..24 greedy output tokens each, so almost every step has a new token count. It reports the
RSS after load, after the first ``--warm`` requests and at the end, the growth in between,
model load time and output tokens per second.

``--baseline-platform DIR`` (a ``platform/`` directory of another build, e.g.
``git archive 2b1cbf3~1 platform | tar -x -C /tmp/base``) runs that build too, in
alternating rounds, so both see the same machine load.

Usage: python bench/bench_engine_memory.py --baseline-platform /tmp/base/platform [--requests 3000] [--rounds 2]
Writes bench/results/engine_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import write_results  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def workload(requests: int, warm: int, seed: int) -> dict:
    """One build, in this process: load, then run the seeded traffic to the end."""
    import random

    import torch

    from fleetserve.cli.serve import DEFAULT_CHECKPOINT
    from fleetserve.engine.config import EngineConfig
    from fleetserve.engine.core.llm_engine import LLMEngine
    from fleetserve.engine.protocol import GenerateRequest
    from fleetserve.engine.sampling_params import SamplingParams

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=str(DEFAULT_CHECKPOINT), num_kv_blocks=1024, max_num_seqs=16))
    out = {"load_s": round(time.perf_counter() - t0, 2), "rss_loaded_mib": round(_rss_mib(), 1)}
    rng = random.Random(seed)
    added = done = tokens = 0
    t0 = time.perf_counter()
    while done < requests:
        while added < requests and len(engine.scheduler.requests) < 20 and rng.random() < 0.5:
            prompt = [rng.randrange(1, 200) for _ in range(rng.randint(1, 300))]
            params = SamplingParams(max_tokens=rng.randint(1, 24), temperature=0, ignore_eos=True)
            engine.add_request(GenerateRequest(f"r{added}", params, prompt_token_ids=prompt))
            added += 1
        for o in engine.step():
            tokens += len(o.token_ids_delta)
            if o.finished:
                done += 1
                if done == warm:
                    out["rss_warm_mib"] = round(_rss_mib(), 1)
    elapsed = time.perf_counter() - t0
    out |= {"rss_end_mib": round(_rss_mib(), 1), "steps": engine.timings.steps, "tokens_per_s": round(tokens / elapsed, 1)}
    out["growth_after_warm_mib"] = round(out["rss_end_mib"] - out["rss_warm_mib"], 1)
    return out


def run_build(platform_dir: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([platform_dir, str(ROOT)]))
    cmd = [sys.executable, __file__, "--child", "--requests", str(args.requests), "--warm", str(args.warm),
           "--seed", str(args.seed)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--warm", type=int, default=500, help="Requests before the growth is measured from.")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-platform", default=None, help="platform/ directory of the build to compare with.")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine_memory.json"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(workload(args.requests, args.warm, args.seed)))
        return 0
    builds = {"this build": str(ROOT / "platform")}
    if args.baseline_platform:
        builds["baseline"] = args.baseline_platform
    runs: dict[str, list] = {name: [] for name in builds}
    for r in range(args.rounds):
        for name, path in builds.items():
            res = run_build(path, args)
            runs[name].append(res)
            print(f"round {r} {name}: {res}", flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {k: round(sum(x[k] for x in rs) / len(rs), 1) for k in rs[0]}
    print(f"\n{'build':<12} {'load s':>7} {'RSS loaded':>11} {'RSS @warm':>10} {'RSS end':>8} {'growth':>7} {'tok/s':>7}")
    for name, s in summary.items():
        print(f"{name:<12} {s['load_s']:>7} {s['rss_loaded_mib']:>11} {s['rss_warm_mib']:>10} {s['rss_end_mib']:>8} "
              f"{s['growth_after_warm_mib']:>7} {s['tokens_per_s']:>7}")
    if "baseline" in summary:
        b, t = summary["baseline"], summary["this build"]
        print(f"\nthis build / baseline: tokens/s {t['tokens_per_s'] / b['tokens_per_s']:.3f}x, "
              f"RSS at end {t['rss_end_mib'] / b['rss_end_mib']:.3f}x")
    write_results({"config": vars(args), "runs": runs, "summary": summary}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
