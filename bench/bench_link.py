"""The replica link's cost, side by side in one run: codec per frame and loopback streams.

1. Per Output frame (a one-token delta, and one with 5 top logprobs): encode, MAC
   (seal), MAC check (open) and decode, in microseconds, for this build (msgspec + keyed
   BLAKE2b MAC) against the pickled field tuple of link v1 (no MAC), built here from
   ``fleetserve.engine.wire.FrameCodec``, which the engine pipe still uses.
2. Loopback link (no Ray, no engine: a generator that yields at once): 32 concurrent
   streams x 256 tokens (tokens/s) and sequential 1-token requests (p50/p99 ms), for this
   build and, with ``--baseline-platform DIR`` (a ``platform/`` directory of another
   build, e.g. ``git archive <commit> platform | tar -x -C /tmp/base``), for that build, in
   alternating rounds of subprocesses so both see the same machine load.

Usage: python bench/bench_link.py [--baseline-platform /tmp/base/platform] [--rounds 3]
Writes bench/results/link.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import timeit
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import write_results  # noqa: E402


def _best_us(fn, number: int = 20000, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def codec() -> dict:
    from fleetserve.deployments import link_frames as lf
    from fleetserve.deployments import link_messages as lm
    from fleetserve.engine.protocol import RequestOutput, TokenLogprob
    from fleetserve.engine.wire import FrameCodec

    @dataclass
    class V1Output:
        sid: int
        output: RequestOutput

    v1 = FrameCodec("link v1", 1, {16: V1Output})
    key = os.urandom(32)
    outs = {
        "1 token": RequestOutput("cmpl-0123456789abcdef-0", " the", [262]),
        "1 token + 5 logprobs": RequestOutput("cmpl-0123456789abcdef-0", " the", [262],
                                              [TokenLogprob(262, -0.25, {262: -0.25, 11: -2.0, 13: -2.5, 8: -3.0, 5: -4.0})]),
    }
    rows = {}
    for name, out in outs.items():
        sealer, opener = lf.Sealer(key), lf.Opener(key, None)
        body = lm.encode(lm.Output.of(3, out))
        framed = sealer.seal(body)[lf.LENGTH.size:]

        def open_check():
            opener._seq = 0  # the same frame again: reset the expected counter
            opener.open(framed)

        v1_body = v1.encode(V1Output(3, out))
        row = {
            "bytes": len(framed) + lf.LENGTH.size, "v1_bytes": len(v1_body) + 4,
            "encode_us": _best_us(lambda: lm.encode(lm.Output.of(3, out))),
            "seal_us": _best_us(lambda: sealer.seal(body)),
            "open_us": _best_us(open_check),
            "decode_us": _best_us(lambda: lm.decode_reply(body).output()),
            "v1_encode_us": _best_us(lambda: v1.encode(V1Output(3, out))),
            "v1_decode_us": _best_us(lambda: v1.decode(v1_body)),
        }
        row["total_us"] = row["encode_us"] + row["seal_us"] + row["open_us"] + row["decode_us"]
        row["v1_total_us"] = row["v1_encode_us"] + row["v1_decode_us"]
        rows[name] = row
    return rows


async def loopback(streams: int, tokens: int, requests: int) -> dict:
    """Run against whichever fleetserve is first on sys.path (this build or a baseline)."""
    from fleetserve.deployments.replica_link import ReplicaLinkClient, ReplicaLinkServer
    from fleetserve.engine.protocol import GenerateRequest, RequestOutput
    from fleetserve.engine.sampling_params import SamplingParams

    async def gen(request):
        n = request.params.max_tokens
        for i in range(n):
            yield RequestOutput(request.request_id, " tok", [i], finished=i == n - 1,
                                finish_reason="length" if i == n - 1 else None)

    secret = os.urandom(32)
    server = ReplicaLinkServer(gen, secret)
    address = await server.start()
    client = ReplicaLinkClient(secret)
    link = await client.link(address)

    async def one(rid: str, n: int) -> int:
        req = GenerateRequest(rid, SamplingParams(max_tokens=n, temperature=0), prompt_token_ids=[1, 2, 3])
        return sum([len(o.token_ids_delta) async for o in client.generate(link, req)])

    for i in range(20):
        await one(f"warm{i}", 4)
    lat = []
    for i in range(requests):
        t = time.perf_counter()
        await one(f"seq{i}", 1)
        lat.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(f"s{i}", tokens) for i in range(streams)))
    elapsed = time.perf_counter() - t0
    await client.close()
    await server.close()
    assert all(c == tokens for c in counts)
    lat.sort()
    return {"tokens_per_s": sum(counts) / elapsed, "p50_ms": 1e3 * statistics.median(lat),
            "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))]}


def _worker(platform_dir: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": platform_dir}
    cmd = [sys.executable, __file__, "--worker", "--streams", str(args.streams), "--tokens", str(args.tokens),
           "--requests", str(args.requests)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=str(ROOT)).stdout
    return json.loads(out.strip().splitlines()[-1])


def _median_of(rounds: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-platform", help="platform/ directory of the build to compare against")
    p.add_argument("--rounds", type=int, default=3, help="Alternating loopback rounds per build (medians reported).")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--requests", type=int, default=300, help="Sequential 1-token requests for p50/p99.")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "link.json"))
    args = p.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(loopback(args.streams, args.tokens, args.requests))))
        return 0
    this = str(ROOT / "platform")
    results = {"config": {"streams": args.streams, "tokens": args.tokens, "requests": args.requests,
                          "rounds": args.rounds, "cpus": os.cpu_count()}, "codec": codec()}
    runs: dict[str, list] = {"this": [], "baseline": []}
    for _ in range(args.rounds):
        runs["this"].append(_worker(this, args))
        if args.baseline_platform:
            runs["baseline"].append(_worker(args.baseline_platform, args))
    results["loopback"] = {k: {"median": _median_of(v), "rounds": v} for k, v in runs.items() if v}
    print_table(results)
    write_results(results, args.out)
    return 0


def print_table(r: dict) -> None:
    print(f"\n{'Output frame':<22}{'bytes':>7}{'enc':>7}{'seal':>7}{'open':>7}{'dec':>7}{'total us':>10}"
          f"{'v1 bytes':>10}{'v1 total us':>13}{'ratio':>7}")
    for name, c in r["codec"].items():
        print(f"{name:<22}{c['bytes']:>7}{c['encode_us']:>7.2f}{c['seal_us']:>7.2f}{c['open_us']:>7.2f}"
              f"{c['decode_us']:>7.2f}{c['total_us']:>10.2f}{c['v1_bytes']:>10}{c['v1_total_us']:>13.2f}"
              f"{c['total_us'] / c['v1_total_us']:>7.2f}x")
    lb = r["loopback"]
    print(f"\n{'loopback link':<14}{'tok/s (32 streams)':>20}{'1-token p50 ms':>16}{'p99 ms':>9}")
    for k, v in lb.items():
        m = v["median"]
        print(f"{k:<14}{m['tokens_per_s']:>20.0f}{m['p50_ms']:>16.3f}{m['p99_ms']:>9.3f}")
    if "baseline" in lb:
        t, b = lb["this"]["median"], lb["baseline"]["median"]
        print(f"this / baseline: tok/s {t['tokens_per_s'] / b['tokens_per_s']:.2f}x, p50 {t['p50_ms'] / b['p50_ms']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
