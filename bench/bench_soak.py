"""Soak: 30 minutes at 80 % of measured capacity, mixed tenants and tiers, streaming and not.

``fleetserve serve --config`` runs as an operator runs it (tiny model, in-memory state, five
tenants over the three tiers, admin key; ``bench/_live_server.py`` takes the machine's Ray
lock while it runs), then:

1. Capacity: a closed-loop ramp (concurrency 1, 2, 4, ...; ``--ramp-step-s`` each) of the
   soak's own request mix (tenants and tiers, streamed or not, chat or text; ``--ramp-mix
   premium`` ramps streamed premium completions only, which overstates what the mix can
   take: priority preemption and isolated prefill steps cost the mix throughput); capacity
   is the highest completed req/s of a step whose p99 TTFT is within ``--ttft-slo-s`` (the
   ramp stops when a step breaks it or gains < 5 %).
2. Open-loop capacity: Poisson arrivals of the same mix at ``--probe-fracs`` of that
   closed-loop figure, ``--probe-step-s`` each, until a step fails (an error, or a median
   TTFT over ``--probe-ttft-p50-s``: a queue that grows): the last rate that passed. A
   closed loop never queues, so it never pays for priority preemption or isolated prefill
   steps, and overstates what Poisson arrivals of three tiers sustain (session 17: 32.3
   req/s closed loop; 80 % of it, 25.9 req/s, overloaded the server).
3. Soak: open-loop Poisson arrivals at ``--load`` (0.8) x capacity for ``--minutes``; each
   request picks a tenant (premium / standard / batch mix), streaming or not
   (``--stream-frac``), completions or chat (``--chat-frac``); the same ``--max-tokens``
   (ignore_eos) as the ramp.
4. Meanwhile the RSS and PSS of every process of the server's tree (the CLI, GCS, raylet,
   Serve controller, proxies, ingress, model replica, engine process, haproxy) every
   ``--sample-s`` (bench/_procmem.py).

Reports per ``--window-s`` window: requests, errors (any non-200 or unfinished response,
target 0), TTFT/TPOT p50/p99 (streams), unary end-to-end p50/p99; the drift of each
percentile between the first and last window after ``--warmup-s``, and each process's
memory drift over the same span (flat: within 5 %). Writes bench/results/soak.json and a PNG
plot (latency per window, memory per process over time).

Usage (the recorded run; ~40 min with the ramp):
  nice -n 10 python bench/bench_soak.py --minutes 30
Smoke (~6 min): python bench/bench_soak.py --minutes 3 --window-s 60 --warmup-s 60 --out bench/results/soak_smoke.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _live_server import RAY_LOCK, live_server  # noqa: E402  (bench/ is this script's directory: first on sys.path)
from _procmem import TreeSampler  # noqa: E402
from _soak_probes import ProbeSampler  # noqa: E402
from _results import write_results  # noqa: E402
from _soak_report import print_report, report, write_plot  # noqa: E402

MODEL = "tiny-llama"
ADMIN_KEY = "fs-bench-soak-admin-0123456789abcdef"
# (tenant id, tier, share of the traffic)
TENANTS = (("premium-a", "premium", 0.2), ("standard-a", "standard", 0.2), ("standard-b", "standard", 0.2),
           ("batch-a", "batch", 0.2), ("batch-b", "batch", 0.2))
PROMPT = "def fibonacci(n):\n    " * 4
METRICS_PORT_RANGE = 4  # the ingress and the model replica each take one port of it


def tenant_key(tenant: str) -> str:
    return f"fs-bench-soak-{tenant}-0123456789abcdef"


def server_config(port: int, metrics_port: int, max_num_seqs: int, fleet_inflight: Optional[int] = None) -> dict:
    from fleetserve.cli.serve import DEFAULT_CHECKPOINT
    from fleetserve.tenants.keys import hash_api_key

    return {
        "server": {"host": "127.0.0.1", "port": port, "grpc_port": None, "app_name": "bench-soak", "admin_key": ADMIN_KEY},
        "metrics": {"host": "127.0.0.1", "port": metrics_port, "port_range": METRICS_PORT_RANGE},
        "models": [{"name": MODEL, "checkpoint": str(DEFAULT_CHECKPOINT), "engine": "native",
                    "engine_args": {"num_kv_blocks": 1024, "max_num_seqs": max_num_seqs, "num_threads": 1},
                    "resources": {"num_cpus": 1}, "max_ongoing_requests": 4 * max_num_seqs + 16}],
        "tenants": {"tenants": [{"id": t, "tier": tier, "api_key_hashes": [hash_api_key(tenant_key(t))]}
                                for t, tier, _ in TENANTS],
                    "scheduling": {} if fleet_inflight is None else {"max_inflight_per_replica": fleet_inflight}},
    }


@dataclass
class Result:
    t: float  # request start, seconds since the phase began
    tenant: str
    tier: str
    stream: bool
    chat: bool
    status: int = 0
    done: bool = False
    tokens: int = 0
    ttft: Optional[float] = None
    tpot: Optional[float] = None  # (last token - first token) / (tokens - 1), streams only
    e2e: Optional[float] = None
    error: str = ""


def request_body(chat: bool, stream: bool, max_tokens: int) -> dict:
    body: dict = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def read_stream(r, res: Result, chat: bool, start: float) -> None:
    first = last = None
    async for raw in r.content:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        if line[6:] == b"[DONE]":
            res.done = True
            break
        chunk = json.loads(line[6:])
        if chunk.get("error"):
            res.error = str(chunk["error"])[:200]
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            if text:
                last = time.monotonic()
                first = first or last
            if choice.get("finish_reason") not in (None, "stop", "length"):
                res.error = f"finish_reason {choice['finish_reason']}"
        if chunk.get("usage"):
            res.tokens = chunk["usage"]["completion_tokens"]
    res.e2e = time.monotonic() - start
    if first is not None:
        res.ttft = first - start
        if res.tokens > 1:
            res.tpot = (last - first) / (res.tokens - 1)


async def one_request(http, base: str, tenant: str, tier: str, stream: bool, chat: bool, max_tokens: int,
                      t0: float) -> Result:
    import aiohttp

    start = time.monotonic()
    res = Result(round(start - t0, 3), tenant, tier, stream, chat)
    url = base + ("/v1/chat/completions" if chat else "/v1/completions")
    try:
        async with http.post(url, json=request_body(chat, stream, max_tokens),
                             headers={"Authorization": f"Bearer {tenant_key(tenant)}"}) as r:
            res.status = r.status
            if r.status != 200:
                res.error = (await r.text())[:200]
            elif stream:
                await read_stream(r, res, chat, start)
            else:
                body = await r.json()
                res.e2e = time.monotonic() - start
                res.tokens = body["usage"]["completion_tokens"]
                res.done = all(c.get("finish_reason") in ("stop", "length") for c in body["choices"])
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as exc:
        res.error = repr(exc)[:200]
    if res.done and res.error:
        res.done = False
    return res


async def wait_serving(http, base: str, args, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = await one_request(http, base, "premium-a", "premium", True, False, args.max_tokens, 0.0)
        if r.done:
            return
        await asyncio.sleep(1.0)
    raise TimeoutError(f"no request succeeded within {timeout_s:.0f}s (last: {r.status} {r.error})")


def pick(rng: random.Random, args) -> tuple[str, str, bool, bool]:
    """One request of the soak's mix: (tenant, tier, stream, chat)."""
    tenant, tier, _ = rng.choices(TENANTS, [share for *_, share in TENANTS])[0]
    return tenant, tier, rng.random() < args.stream_frac, rng.random() < args.chat_frac


async def ramp(http, base: str, args) -> dict:
    """Closed-loop steps of doubling concurrency (the soak's mix, or premium streams only)."""
    from _stats import pct

    steps, best = [], 0.0
    conc = 1
    rng = random.Random(args.seed + 1)
    while conc <= args.max_concurrency:
        stop = time.monotonic() + args.ramp_step_s
        results: list[Result] = []

        async def worker():
            while time.monotonic() < stop:
                tenant, tier, stream, chat = (pick(rng, args) if args.ramp_mix == "soak"
                                              else ("premium-a", "premium", True, False))
                results.append(await one_request(http, base, tenant, tier, stream, chat, args.max_tokens, 0.0))

        t = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(conc)))
        ok = [r for r in results if r.done]
        rps = len(ok) / (time.monotonic() - t)
        p99 = pct([r.ttft for r in ok if r.ttft is not None], 0.99)
        steps.append({"concurrency": conc, "rps": round(rps, 2), "ttft_p99_s": p99, "errors": len(results) - len(ok),
                      "error_samples": sorted({f"{r.status} {r.error}"[:120] for r in results if not r.done})[:5]})
        print(f"ramp: concurrency {conc}: {rps:.2f} req/s, TTFT p99 {p99}", flush=True)
        if p99 is None or p99 > args.ttft_slo_s or len(ok) < len(results):
            break
        if rps < best * 1.05:
            best = max(best, rps)
            break
        best = rps
        conc *= 2
    if best == 0.0 and steps:  # even one stream at a time misses the SLO (a loaded machine): soak at what it did
        best = steps[0]["rps"]
    if best <= 0.0:
        raise RuntimeError(f"no capacity measured: {steps}")
    return {"steps": steps, "capacity_rps": round(best, 2)}


async def probe(http, base: str, closed_rps: float, args) -> dict:
    """Open-loop steps of the soak's mix at rising fractions of the closed-loop capacity.

    A closed loop never queues: at concurrency = batch size every request starts at once,
    so no premium arrival preempts a batch request or takes an isolated prefill step. Poisson
    arrivals of three tiers do both, and the rate they sustain is lower. A step passes when
    every request succeeded and the median TTFT stayed within ``--probe-ttft-p50-s`` (a queue
    that grows through a step pushes the median up within seconds); the open-loop capacity
    is the rate of the last step that passed. Each step drains before the next starts."""
    from _stats import pct

    steps, best = [], 0.0
    for frac in args.probe_fracs:
        rate = frac * closed_rps
        results = await soak(http, base, rate, args, seconds=args.probe_step_s, seed=args.seed + 2 + len(steps))
        ok = [r for r in results if r.done]
        p50 = pct([r.ttft for r in ok if r.ttft is not None], 0.5)
        passed = len(ok) == len(results) and p50 is not None and p50 <= args.probe_ttft_p50_s
        steps.append({"fraction": frac, "offered_rps": round(rate, 2), "requests": len(results),
                      "errors": len(results) - len(ok), "ttft_p50_s": p50,
                      "ttft_p99_s": pct([r.ttft for r in ok if r.ttft is not None], 0.99), "passed": passed})
        print(f"probe: {rate:.2f} req/s open loop: {len(results) - len(ok)} errors, TTFT p50 {p50}", flush=True)
        if not passed:
            break
        best = rate
    if best == 0.0:
        raise RuntimeError(f"no open-loop rate sustained: {steps}")
    return {"steps": steps, "capacity_rps": round(best, 2)}


async def soak(http, base: str, rate: float, args, seconds: Optional[float] = None,
               seed: Optional[int] = None) -> list[Result]:
    rng = random.Random(args.seed if seed is None else seed)
    seconds = args.minutes * 60.0 if seconds is None else seconds
    t0 = time.monotonic()
    tasks, offset = [], 0.0
    while offset < seconds:
        await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
        tenant, tier, stream, chat = pick(rng, args)
        tasks.append(asyncio.create_task(one_request(http, base, tenant, tier, stream, chat, args.max_tokens, t0)))
        offset += rng.expovariate(rate)
    return list(await asyncio.gather(*tasks))


async def run(args) -> dict:
    import aiohttp

    from tests.fixtures.ray_serve import free_port

    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    out: dict = {"config": vars(args) | {"tenants": [list(t) for t in TENANTS]}}
    with live_server(server_config(port, metrics_port, args.max_num_seqs, args.fleet_inflight), base, args.lock) as proc:
        sampler = TreeSampler(proc.pid, args.sample_s).start()
        probes = ProbeSampler(metrics_port, METRICS_PORT_RANGE, ADMIN_KEY, args.probe_s, t0=sampler.t0).start()
        timeout = aiohttp.ClientTimeout(total=args.request_timeout)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
                await wait_serving(http, base, args)
                if args.rate:  # a rate measured before: runs of one build compare at the same load
                    out["capacity"] = {"steps": [], "capacity_rps": None}
                    rate = args.rate
                else:
                    out["capacity"] = await ramp(http, base, args)
                    capacity = out["capacity"]["capacity_rps"]
                    if args.probe_fracs:
                        out["open_loop"] = await probe(http, base, capacity, args)
                        capacity = out["open_loop"]["capacity_rps"]
                    rate = args.load * capacity
                out["offered_rps"] = round(rate, 3)
                print(f"soak: {rate:.2f} req/s for {args.minutes} min", flush=True)
                soak_start = time.monotonic() - sampler.t0
                sampler.sample()
                results = await soak(http, base, rate, args)
        finally:
            sampler.stop()
            probes.stop()
    for series in sampler.series.values():  # memory time axis = soak time axis (the ramp is negative)
        series.t = [round(t - soak_start, 1) for t in series.t]
    probes.series.t = [round(t - soak_start, 1) for t in probes.series.t]
    out["probes"] = asdict(probes.series)
    out["requests"] = [asdict(r) for r in results]
    out["memory"] = {str(pid): asdict(s) for pid, s in sampler.series.items()}
    return out


def write_requests(requests: list[dict], path: Path) -> None:
    import gzip

    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        json.dump(requests, f)
    print(f"wrote {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="Length of the soak phase.")
    p.add_argument("--window-s", type=float, default=300.0, help="Width of each reporting window.")
    p.add_argument("--warmup-s", type=float, default=300.0,
                   help="Start of the span the drift verdicts compare (the first window by default).")
    p.add_argument("--load", type=float, default=0.8, help="Offered load as a fraction of measured capacity.")
    p.add_argument("--max-tokens", type=int, default=64, help="Completion tokens per request (ignore_eos).")
    p.add_argument("--max-num-seqs", type=int, default=32,
                   help="The replica's engine batch size (the fleet's slots follow it). 32: past the tiny model's "
                   "compute knee on 2 cores (closed loop 21.2 req/s at 16, 23.9 at 32), so compute, not slots, bounds "
                   "it; at 16 the slots bound first and every Poisson burst queues (session 18).")
    p.add_argument("--fleet-inflight", type=int, default=None,
                   help="tenants.scheduling.max_inflight_per_replica (default: unset, the product's default).")
    p.add_argument("--stream-frac", type=float, default=0.5, help="Share of streamed requests.")
    p.add_argument("--chat-frac", type=float, default=0.3, help="Share of chat (vs text) completions.")
    p.add_argument("--ttft-slo-s", type=float, default=1.0, help="p99 TTFT a ramp step must meet to count as capacity.")
    p.add_argument("--ramp-step-s", type=float, default=15.0, help="Length of each ramp step.")
    p.add_argument("--probe-fracs", type=lambda v: [float(x) for x in v.split(",") if x], default=[0.5, 0.6, 0.7, 0.8, 0.9],
                   help="Open-loop probe rates as fractions of the closed-loop capacity (comma-separated; empty: "
                   "soak at --load x the closed-loop capacity).")
    p.add_argument("--probe-step-s", type=float, default=90.0, help="Length of each open-loop probe step.")
    p.add_argument("--probe-ttft-p50-s", type=float, default=0.25,
                   help="Median TTFT an open-loop probe step must stay within to pass.")
    p.add_argument("--ramp-mix", choices=("soak", "premium"), default="soak",
                   help="What the capacity ramp sends: the soak's mix, or streamed premium completions only.")
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--rate", type=float, default=None,
                   help="Soak at this many req/s and skip the capacity ramp and probes (repeat runs at one load).")
    p.add_argument("--sample-s", type=float, default=10.0, help="Memory sampling interval.")
    p.add_argument("--probe-s", type=float, default=5.0,
                   help="Interval of the CPU (busy, steal) and server-metrics samples (bench/_soak_probes.py).")
    p.add_argument("--series-s", type=float, default=10.0,
                   help="Bucket width of the fine-grained series the attribution of the tail uses.")
    p.add_argument("--requests-out", default=None,
                   help="Also write every request's record to this JSON(.gz) file for analysis.")
    p.add_argument("--memory-drift-pct", type=float, default=5.0, help="Flat memory: drift within this, per process.")
    p.add_argument("--latency-drift-pct", type=float, default=25.0,
                   help="Flat latency: each percentile's last window within this of its first (after warm-up).")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lock", default=RAY_LOCK, help="File lock held while the server's Ray runs.")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = p.parse_args()
    raw = asyncio.run(run(args))
    if args.requests_out:
        write_requests(raw["requests"], Path(args.requests_out))
    summary = report(raw, args)
    print_report(summary)
    plot = write_plot(raw, summary, Path(args.out).with_suffix(".png"))
    summary["plot"] = str(plot.relative_to(ROOT)) if plot.is_relative_to(ROOT) else str(plot)
    write_results(summary | {"memory_series": raw["memory"], "probe_series": raw["probes"]}, args.out)
    return 0 if summary["verdicts"]["errors_zero"] else 1


if __name__ == "__main__":
    sys.exit(main())
