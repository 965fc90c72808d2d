"""Long fuzz run: schemathesis over the served OpenAPI spec, 10k+ cases, 0 responses >= 500 expected.

Two targets, the same hooks as the CI-sized test (tests/api/openapi_fuzz.py):

- ``inprocess`` (default, no Ray): the real REST app (``build_rest_app``) over an in-process
  :class:`InferenceService` with the tiny checkpoint's real tokenizer and a scripted stream
  stage, the admin routes against its in-memory registry; requests go through schemathesis's
  ASGI transport. This is where the 10k+ cases run: no port, no cluster.
- ``live``: ``fleetserve serve`` started by this script on loopback (tiny model, in-memory
  state, free ports), fuzzed over HTTP from its own ``/openapi.json``: the inference routes
  with a tenant key, every admin route (scaling, drain, adapters included) with the admin key
  against that server's own registry. ``max_tokens``/``n`` are capped so a case costs a few
  engine steps. It starts a Ray cluster, so it takes ``--lock`` (the machine's shared Ray
  lock) for as long as the server runs.

Prints cases per operation and the count of responses >= 500 (and the curl reproduction of
each); writes bench/results/fuzz.json.

Usage: nice -n 10 python bench/bench_fuzz.py [--target inprocess|live|both] [--examples 500] [--live-examples 25]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _live_server import RAY_LOCK, live_server  # noqa: E402  (bench/ is this script's directory: first on sys.path)
from _results import write_results  # noqa: E402

TENANT_KEY = "fs-bench-fuzz-tenant-0123456789abcdef"
ADMIN_KEY = "fs-bench-fuzz-admin-0123456789abcdef"
LIVE_MODEL = "tiny-llama"


def progress_printer(t0: float, partial_out: Path, examples: int):
    """Prints each finished (operation, mode) and rewrites ``partial_out`` with the tally so far,
    so a run stopped early still leaves its counts."""

    def show(step: str, tally) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {step}: {tally.cases()} cases so far, {tally.at_least_500()} >= 500",
              flush=True)
        partial = summarize(tally, time.monotonic() - t0, examples) | {"partial": True, "last_step": step}
        partial_out.parent.mkdir(parents=True, exist_ok=True)
        partial_out.write_text(json.dumps(partial, indent=2) + "\n")

    return show


def summarize(tally, wall_s: float, examples: int) -> dict:
    return {
        "examples_per_operation_and_mode": examples,
        "cases": tally.cases(),
        "operations": len(tally.statuses),
        "responses_at_least_500": tally.at_least_500(),
        "statuses": {str(s): n for s, n in sorted(tally.totals().items())},
        "per_operation": {op: {str(s): n for s, n in sorted(c.items())} for op, c in tally.statuses.items()},
        "server_errors": tally.server_errors,
        "wall_s": round(wall_s, 1),
        "cases_per_s": round(tally.cases() / wall_s, 1) if wall_s else None,
    }


def run_inprocess(examples: int, partial_out: Path) -> dict:
    import schemathesis

    from fleetserve.cli.serve import DEFAULT_CHECKPOINT, ensure_tiny_checkpoint
    from tests.api.openapi_fuzz import fuzz_schema
    from tests.api.rest_harness import ADMIN, AUTH, MODEL, ScriptedClient, make_rest
    from tests.api.test_truncation import COMPLETE

    ensure_tiny_checkpoint(DEFAULT_CHECKPOINT)
    rest = make_rest(ScriptedClient(COMPLETE), DEFAULT_CHECKPOINT)
    schema = schemathesis.openapi.from_asgi("/openapi.json", rest.app)
    t0 = time.monotonic()
    tally = fuzz_schema(schema, examples, admin_headers=ADMIN, tenant_headers=AUTH, tenant_id="acme", model=MODEL,
                        progress=progress_printer(t0, partial_out, examples))
    return summarize(tally, time.monotonic() - t0, examples)


def live_config(port: int, metrics_port: int) -> dict:
    from fleetserve.cli.serve import DEFAULT_CHECKPOINT
    from fleetserve.tenants.keys import hash_api_key

    return {
        "server": {"host": "127.0.0.1", "port": port, "grpc_port": None, "app_name": "bench-fuzz", "admin_key": ADMIN_KEY},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "models": [{"name": LIVE_MODEL, "checkpoint": str(DEFAULT_CHECKPOINT), "engine": "native",
                    "engine_args": {"num_kv_blocks": 512, "max_num_seqs": 16, "num_threads": 1},
                    "resources": {"num_cpus": 1}}],
        "tenants": {"tenants": [{"id": "acme", "tier": "standard", "api_key_hashes": [hash_api_key(TENANT_KEY)]}]},
    }


def run_live(examples: int, lock_path: str, partial_out: Path) -> dict:
    import schemathesis

    from tests.api.openapi_fuzz import fuzz_schema
    from tests.fixtures.ray_serve import free_port

    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    with live_server(live_config(port, metrics_port), base, lock_path) as proc:
        schema = schemathesis.openapi.from_url(base + "/openapi.json")
        t0 = time.monotonic()
        tally = fuzz_schema(schema, examples, admin_headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                            tenant_headers={"Authorization": f"Bearer {TENANT_KEY}"}, tenant_id="acme",
                            model=LIVE_MODEL, cap_tokens=True, call_kwargs={"timeout": 60},
                            progress=progress_printer(t0, partial_out, examples))
        out = summarize(tally, time.monotonic() - t0, examples)
        out["server_alive_after"] = proc.poll() is None
        return out


def print_table(name: str, r: dict) -> None:
    print(f"\n{name}: {r['cases']} cases over {r['operations']} operations in {r['wall_s']} s "
          f"({r['cases_per_s']} cases/s); responses >= 500: {r['responses_at_least_500']}")
    rows = [("operation", "cases", "2xx", "4xx", ">=500")]
    for op, statuses in r["per_operation"].items():
        counts = {int(s): n for s, n in statuses.items()}
        rows.append((op, str(sum(counts.values())), str(sum(n for s, n in counts.items() if s < 300)),
                     str(sum(n for s, n in counts.items() if 400 <= s < 500)), str(sum(n for s, n in counts.items() if s >= 500))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    for err in r["server_errors"]:
        print("  >= 500:", err)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=("inprocess", "live", "both"), default="inprocess")
    p.add_argument("--examples", type=int, default=500,
                   help="In-process: examples per operation and generation mode (500: about 11k cases).")
    p.add_argument("--live-examples", type=int, default=25,
                   help="Live server: examples per operation and generation mode (25: about 800 cases).")
    p.add_argument("--lock", default=RAY_LOCK, help="File lock held while the live server's Ray runs.")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz.json"))
    args = p.parse_args()
    results: dict = {"config": vars(args)}
    if args.target in ("inprocess", "both"):
        results["inprocess"] = run_inprocess(args.examples, Path(args.out).with_suffix(".inprocess.partial.json"))
        print_table("in-process", results["inprocess"])
    if args.target in ("live", "both"):
        results["live"] = run_live(args.live_examples, args.lock, Path(args.out).with_suffix(".live.partial.json"))
        print_table("live server", results["live"])
    write_results(results, args.out)
    for target in ("inprocess", "live"):
        Path(args.out).with_suffix(f".{target}.partial.json").unlink(missing_ok=True)
    bad = sum(results[t]["responses_at_least_500"] for t in ("inprocess", "live") if t in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
