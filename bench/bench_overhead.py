"""Platform overhead, side by side in one run, on the tiny model.

1. p50/p99 latency (sequential) and max req/s (closed loop, --concurrency clients) of a
   trivial request (max_tokens=1) through: a direct AsyncEngine call in this process, a
   Serve DeploymentHandle, the full REST path (Serve HTTP proxy -> ingress -> replica), and
   gRPC (Serve gRPC proxy -> ingress -> replica).
2. Streamed-token throughput of 32 concurrent streams: REST (SSE) vs direct engine.
3. Memory: total PSS (/proc/<pid>/smaps_rollup) of the Ray process tree that serves the
   model (everything this script's ray.init started), idle and under the 32-stream load.

Usage: python bench/bench_overhead.py [--seconds 5] [--requests 200]
Writes bench/results/overhead.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import write_results  # noqa: E402  (bench/ is this script's directory: first on sys.path)

API_KEY = "fs-bench-key-0123456789abcdefghij"
MODEL = "tiny-llama"
PROMPT = "def add(a, b):"


# ----- memory -----------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pss_bytes(root_pid: int, include_root: bool) -> tuple[int, int]:
    """(total PSS bytes, process count) of root's descendants (and root if asked)."""
    kids = _children_map()
    stack, pids = list(kids.get(root_pid, [])), []
    while stack:
        p = stack.pop()
        pids.append(p)
        stack.extend(kids.get(p, []))
    if include_root:
        pids.append(root_pid)
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total, len(pids)


class PeakPss:
    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, tree_pss_bytes(self.pid, include_root=False)[0])

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# ----- load helpers -----------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def latency_and_rate(call, n_seq: int, seconds: float, concurrency: int) -> dict:
    for _ in range(5):
        await call()  # warm-up
    lat = []
    for _ in range(n_seq):
        t = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {"p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * pct(lat, 0.99), "max_rps": done / elapsed}


async def stream_throughput(one_stream, n_streams: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one_stream(i) for i in range(n_streams)))
    elapsed = time.perf_counter() - t0
    return {"streams": n_streams, "tokens": sum(counts), "seconds": elapsed, "tokens_per_s": sum(counts) / elapsed,
            "all_complete": all(c == max_tokens for c in counts)}


# ----- the four paths ---------------------------------------------------------------------


def make_request(i: int, max_tokens: int, ids: list[int]):
    from fleetserve.engine.protocol import GenerateRequest
    from fleetserve.engine.sampling_params import SamplingParams

    return GenerateRequest(request_id=f"bench-{time.monotonic_ns()}-{i}", prompt_token_ids=ids,
                           params=SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))


async def run(args) -> dict:
    import aiohttp
    import grpc
    import ray

    from fleetserve.api.grpc import inference_pb2 as pb
    from fleetserve.api.grpc import inference_pb2_grpc as pbg
    from fleetserve.cli.serve import DEFAULT_CHECKPOINT, ensure_tiny_checkpoint
    from fleetserve.config import parse_config
    from fleetserve.application.build import deploy, model_handle
    from fleetserve.engine.process.async_engine import AsyncEngine
    from fleetserve.tenants.keys import hash_api_key
    from tests.fixtures.ray_serve import free_port

    ensure_tiny_checkpoint(DEFAULT_CHECKPOINT)
    http_port, grpc_port = free_port(), free_port()
    engine_args = {"num_kv_blocks": 1024, "max_num_seqs": 64, "num_threads": 1}
    cfg = parse_config({
        "server": {"port": http_port, "grpc_port": grpc_port, "app_name": "bench"},
        "models": [{"name": MODEL, "checkpoint": str(DEFAULT_CHECKPOINT), "engine_args": engine_args, "resources": {"num_cpus": 1}}],
        "tenants": {"tenants": [{"id": "bench", "api_key_hashes": [hash_api_key(API_KEY)]}]},
    })
    results: dict = {"config": {"seconds": args.seconds, "requests": args.requests, "concurrency": args.concurrency,
                                "stream_max_tokens": args.stream_tokens, "cpus": os.cpu_count()}}

    # 1. direct engine, in this process, before Ray starts (no contention with replicas)
    engine = AsyncEngine(cfg.models[0].native_engine_config())
    await engine.start()
    ids = engine.encode(PROMPT)

    async def direct_call():
        async for _ in engine.generate(make_request(0, 1, ids)):
            pass

    async def direct_stream(i):
        n = 0
        async for out in engine.generate(make_request(i, args.stream_tokens, ids)):
            n += len(out.token_ids_delta)
        return n

    results["direct"] = await latency_and_rate(direct_call, args.requests, args.seconds, args.concurrency)
    results["direct_streams"] = await stream_throughput(direct_stream, 32, args.stream_tokens)
    await engine.shutdown()
    del engine

    from fleetserve.config import ServerConfig
    from fleetserve.deployments.ray_env import apply_serve_env

    apply_serve_env(ServerConfig())  # the platform's default Serve tuning, as `fleetserve serve` runs it
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        deploy(cfg)
        handle = model_handle(cfg, MODEL).options(stream=True)
        base = f"http://127.0.0.1:{http_port}/v1/completions"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
            for _ in range(600):  # wait for readiness (poll, no fixed sleep)
                try:
                    async with http.post(base, json=body, headers=headers) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
            mem_idle, n_procs = tree_pss_bytes(os.getpid(), include_root=False)

            async def handle_call():
                async for _ in handle.generate.remote(make_request(0, 1, ids)):
                    pass

            async def rest_call():
                async with http.post(base, json=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    await r.read()

            results["serve_handle"] = await latency_and_rate(handle_call, args.requests, args.seconds, args.concurrency)
            results["rest"] = await latency_and_rate(rest_call, args.requests, args.seconds, args.concurrency)

            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                stub = pbg.InferenceStub(ch)
                md = [("authorization", f"Bearer {API_KEY}"), ("application", "bench")]

                async def grpc_call():
                    await stub.Generate(pb.GenerateRequest(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0), metadata=md)

                results["grpc"] = await latency_and_rate(grpc_call, args.requests, args.seconds, args.concurrency)

            async def rest_stream(i):
                sbody = {"model": MODEL, "prompt": PROMPT, "max_tokens": args.stream_tokens, "temperature": 0,
                         "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
                tokens = 0
                async with http.post(base, json=sbody, headers=headers) as r:
                    async for line in r.content:
                        if line.startswith(b"data: {") and b'"usage":{' in line:
                            tokens = json.loads(line[6:])["usage"]["completion_tokens"]
                return tokens

            with PeakPss(os.getpid()) as peak:
                results["rest_streams"] = await stream_throughput(rest_stream, 32, args.stream_tokens)
        results["memory"] = {"idle_pss_mb": mem_idle / 2**20, "load_peak_pss_mb": peak.peak / 2**20,
                             "processes": n_procs, "target_mb": 2048}
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return results


def print_table(r: dict) -> None:
    d = r["direct"]
    print(f"\n{'path':<22}{'p50 ms':>9}{'p99 ms':>9}{'max req/s':>11}{'p50 vs direct':>15}")
    for key, name in (("direct", "direct engine"), ("serve_handle", "Serve handle"), ("rest", "REST (full path)"), ("grpc", "gRPC (Serve proxy)")):
        x = r[key]
        print(f"{name:<22}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}{x['max_rps']:>11.1f}{x['p50_ms'] / d['p50_ms']:>14.1f}x")
    ds, rs = r["direct_streams"], r["rest_streams"]
    print(f"\n32 streams x {r['config']['stream_max_tokens']} tokens: direct {ds['tokens_per_s']:.0f} tok/s, "
          f"REST {rs['tokens_per_s']:.0f} tok/s ({rs['tokens_per_s'] / ds['tokens_per_s']:.2f}x), all complete: {rs['all_complete']}")
    m = r["memory"]
    print(f"memory (PSS of {m['processes']} Ray processes): idle {m['idle_pss_mb']:.0f} MB, "
          f"under 32-stream load {m['load_peak_pss_mb']:.0f} MB (target <= {m['target_mb']} MB)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="Duration of each max-throughput phase.")
    p.add_argument("--requests", type=int, default=200, help="Sequential requests for p50/p99.")
    p.add_argument("--concurrency", type=int, default=32, help="Closed-loop clients for max req/s.")
    p.add_argument("--stream-tokens", type=int, default=64, help="max_tokens of each of the 32 streams.")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = p.parse_args()
    results = asyncio.run(run(args))
    print_table(results)
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
