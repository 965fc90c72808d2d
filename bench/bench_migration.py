"""What a migration costs a stream: the gap at the resume point against the stream's normal
inter-token gap, side by side in one run (issue 23, item 5).

Two model replicas of the tiny (or 100m) preset run in this process (``ModelReplica`` with
the native engine, its core in a child process, one output per engine step). N streams --
half greedy, half seeded sampling at temperature 1 -- go through the ingress's resume stage
(``api/resume.py``), half of them placed on replica A. Three runs:

1. ``baseline``: nothing happens; the reference texts and the normal gaps.
2. ``drain``: once every stream has ``--cut`` tokens, replica A is drained in ``migrate``
   mode: its streams are handed back and resumed on B.
3. ``kill``: the same, but A's engine process is SIGKILLed (the replica ends its streams
   with ``abort``; the ingress resumes them after its first backoff).

Per interrupted stream: ``resume gap`` = time from its last output before the interruption
to its first output after it; ``added`` = resume gap - the stream's median gap. Also the
time from the drain notice until every handed-back stream produced again on B, and whether
every text equals the baseline's.

Usage: python bench/bench_migration.py [--preset tiny] [--streams 8] [--max-tokens 160]
Writes bench/results/migration.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "bench"))
# The engine's core process imports fleetserve too: the same tree as this script.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "platform"), os.environ.get("PYTHONPATH")]))

from _results import write_results  # noqa: E402
from bench_engine import ensure_checkpoint  # noqa: E402

from fleetserve.api.resume import ResumePolicy, resumable_stream  # noqa: E402
from fleetserve.config import ModelConfig  # noqa: E402
from fleetserve.deployments.model_client import LinkTarget, Route  # noqa: E402
from fleetserve.deployments.replica import ModelReplica  # noqa: E402
from fleetserve.engine.protocol import GenerateRequest  # noqa: E402
from fleetserve.engine.sampling_params import SamplingParams  # noqa: E402
from fleetserve.errors import ReplicaStreamLost, ServiceUnavailableError  # noqa: E402


class LocalFleet:
    """A ModelClient over in-process replicas: the route's first link names the replica."""

    def __init__(self, replicas: dict[str, ModelReplica]):
        self.replicas = replicas

    async def generate(self, request, route):
        """Like HandleModelClient over a link: a 503 from the replica names it, so the resume
        stage avoids it (in production a refused stream falls back to Serve's router)."""
        rid = route.links[0].replica
        try:
            async for out in self.replicas[rid].generate(request):
                yield out
        except ReplicaStreamLost as exc:  # handed back (RequestMigrated): keep the type
            exc.replica = rid
            raise
        except ServiceUnavailableError as exc:
            raise ReplicaStreamLost(str(exc), replica=rid) from exc

    async def model_info(self, model):
        return await next(iter(self.replicas.values())).model_info()


async def make_replica(checkpoint: Path) -> ModelReplica:
    cfg = ModelConfig(name="m", checkpoint=str(checkpoint), stream_interval_s=0.0, drain_mode="migrate",
                      engine_args={"num_kv_blocks": 1024, "max_num_seqs": 64, "num_threads": 1})
    replica = ModelReplica.__new__(ModelReplica)
    await replica.__init__(cfg.model_dump(mode="json"))
    return replica


def requests(n: int, max_tokens: int) -> list[GenerateRequest]:
    out = []
    for i in range(n):
        params = (SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True) if i % 2 == 0 else
                  SamplingParams(temperature=1.0, seed=1000 + i, max_tokens=max_tokens, ignore_eos=True))
        out.append(GenerateRequest(f"s{i}", params, prompt=f"def task_{i}(items, limit={i}):\n    "))
    return out


async def run(fleet: LocalFleet, reqs: list[GenerateRequest], cut: int, interrupt=None) -> dict:
    """Stream every request; ``interrupt()`` runs once every stream has ``cut`` tokens."""
    ids = list(fleet.replicas)
    times: dict[str, list[float]] = {r.request_id: [] for r in reqs}
    texts: dict[str, str] = {r.request_id: "" for r in reqs}
    counts = {r.request_id: 0 for r in reqs}
    ready = asyncio.Event()

    async def one(i: int, req: GenerateRequest) -> None:
        order = ids if i % 2 == 0 else ids[::-1]
        route = Route("m", None, tuple(LinkTarget(x, x) for x in order))
        async for out in resumable_stream(fleet, req, route, lambda avoid: route, ResumePolicy()):
            times[req.request_id].append(time.perf_counter())
            texts[req.request_id] += out.text_delta
            counts[req.request_id] += len(out.token_ids_delta)
            if all(c >= cut for c in counts.values()):
                ready.set()

    tasks = [asyncio.create_task(one(i, r)) for i, r in enumerate(reqs)]
    at = None
    if interrupt is not None:
        await asyncio.wait_for(ready.wait(), 300)
        at = time.perf_counter()
        await interrupt()
    await asyncio.gather(*tasks)
    return {"times": times, "texts": texts, "at": at}


def gaps_at(result: dict, moved: list[str]) -> dict:
    """Per moved stream: median gap, the gap that spans the interruption, and the added latency."""
    at = result["at"]
    rows = []
    for rid in moved:
        ts = result["times"][rid]
        gaps = [b - a for a, b in zip(ts[1:-1], ts[2:])]
        before = max(t for t in ts if t <= at)
        after = min(t for t in ts if t > at)
        rows.append({"median_gap_ms": statistics.median(gaps) * 1e3, "resume_gap_ms": (after - before) * 1e3,
                     "first_after_notice_ms": (after - at) * 1e3})
    med = statistics.median
    return {
        "streams_moved": len(rows),
        "median_gap_ms": med(r["median_gap_ms"] for r in rows),
        "resume_gap_ms_p50": med(r["resume_gap_ms"] for r in rows),
        "resume_gap_ms_max": max(r["resume_gap_ms"] for r in rows),
        "added_ms_p50": med(r["resume_gap_ms"] - r["median_gap_ms"] for r in rows),
        "notice_to_all_moved_ms": max(r["first_after_notice_ms"] for r in rows),
    }


async def main(args) -> dict:
    checkpoint = ensure_checkpoint(Path(args.cache_dir), args.preset)
    results: dict = {"preset": args.preset, "streams": args.streams, "max_tokens": args.max_tokens, "cut": args.cut}
    a, b = await make_replica(checkpoint), await make_replica(checkpoint)
    fleet = LocalFleet({"A": a, "B": b})
    reqs = requests(args.streams, args.max_tokens)
    base = await run(fleet, reqs, args.cut)
    on_a = [r.request_id for i, r in enumerate(reqs) if i % 2 == 0]

    async def drain():
        ack = await a.set_draining(True, mode="migrate")
        results["drain_ack_migrated"] = ack.migrated

    drained = await run(fleet, [_fresh(r, "d") for r in reqs], args.cut, drain)
    results["drain"] = gaps_at(drained, [f"{rid}d" for rid in on_a])
    results["drain"]["differ"] = [r for r in base["texts"] if drained["texts"][r + "d"] != base["texts"][r]]
    results["drain"]["identical"] = not results["drain"]["differ"]
    await a.set_draining(False)

    async def kill():
        os.kill(a._engine._proc.pid, signal.SIGKILL)

    killed = await run(fleet, [_fresh(r, "k") for r in reqs], args.cut, kill)
    results["kill"] = gaps_at(killed, [f"{rid}k" for rid in on_a])
    results["kill"]["differ"] = [r for r in base["texts"] if killed["texts"][r + "k"] != base["texts"][r]]
    results["kill"]["identical"] = not results["kill"]["differ"]
    for replica in (a, b):
        try:
            await replica.__del__()
        except Exception:  # noqa: BLE001 - A's engine is dead by design
            pass
    return results


def _fresh(req: GenerateRequest, tag: str) -> GenerateRequest:
    from dataclasses import replace

    return replace(req, request_id=req.request_id + tag)


def print_table(r: dict) -> None:
    print(f"\nmigration cost, {r['preset']} preset, {r['streams']} streams x {r['max_tokens']} tokens, "
          f"interrupted after {r['cut']} tokens each")
    print(f"{'scenario':<8} {'moved':>5} {'median gap ms':>14} {'resume gap p50':>15} {'max':>8} "
          f"{'added p50 ms':>13} {'ratio':>6} {'notice->moved ms':>17} {'identical':>9}")
    for name in ("drain", "kill"):
        s = r[name]
        ratio = s["resume_gap_ms_p50"] / s["median_gap_ms"]
        print(f"{name:<8} {s['streams_moved']:>5} {s['median_gap_ms']:>14.1f} {s['resume_gap_ms_p50']:>15.1f} "
              f"{s['resume_gap_ms_max']:>8.1f} {s['added_ms_p50']:>13.1f} {ratio:>6.1f} "
              f"{s['notice_to_all_moved_ms']:>17.1f} {str(s['identical']):>9}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--cut", type=int, default=40, help="tokens every stream has when the interruption lands")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "fleetserve" / "bench-checkpoints"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "migration.json"))
    ns = parser.parse_args()
    res = asyncio.run(main(ns))
    print_table(res)
    write_results(res, ns.out)
