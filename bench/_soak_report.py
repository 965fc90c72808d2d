"""Windows, drift verdicts and the plot of bench/bench_soak.py's raw results."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

from _procmem import Series, drift
from _stats import pct

LATENCIES = (("ttft", "stream"), ("tpot", "stream"), ("e2e", "unary"))


def _ms(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(1000.0 * x, 2)


def window_rows(requests: list[dict], window_s: float, seconds: float) -> list[dict]:
    rows = []
    n = max(1, int(round(seconds / window_s)))
    for i in range(n):
        rs = [r for r in requests if i * window_s <= r["t"] < (i + 1) * window_s or (i == n - 1 and r["t"] >= n * window_s)]
        ok = [r for r in rs if r["status"] == 200 and r["done"]]
        row = {"window": i, "start_s": i * window_s, "requests": len(rs), "errors": len(rs) - len(ok),
               "statuses": dict(Counter(str(r["status"]) for r in rs if r["status"] != 200)),
               "completed_rps": round(len(ok) / window_s, 3), "tokens_per_s": round(sum(r["tokens"] for r in ok) / window_s, 1)}
        for name, kind in LATENCIES:
            xs = [r[name] for r in ok if r[name] is not None and r["stream"] == (kind == "stream")]
            row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = _ms(pct(xs, 0.5)), _ms(pct(xs, 0.99))
        row["ttft_by_tier_ms"] = {}  # tier -> (p50, p99): a priority scheduler's tail is its lowest tier's
        for tier in sorted({r["tier"] for r in ok if r.get("tier")}):
            xs = [r["ttft"] for r in ok if r.get("tier") == tier and r["ttft"] is not None]
            row["ttft_by_tier_ms"][tier] = [_ms(pct(xs, 0.5)), _ms(pct(xs, 0.99))]
        rows.append(row)
    return rows


def latency_drift(rows: list[dict], warmup_s: float) -> dict:
    """Each percentile's last window over its first window after warm-up, in %."""
    after = [r for r in rows if r["start_s"] >= warmup_s and r["requests"]] or rows[-1:]
    out = {}
    for name, _ in LATENCIES:
        for q in ("p50", "p99"):
            key = f"{name}_{q}_ms"
            first, last = after[0].get(key), after[-1].get(key)
            out[key] = None if not first or last is None else round(100.0 * (last - first) / first, 1)
    return out


def _at(probes: dict, lo: float, hi: float) -> list[int]:
    return [i for i, t in enumerate(probes.get("t", ())) if lo <= t < hi]


def fine_series(requests: list[dict], probes: Optional[dict], bucket_s: float, seconds: float) -> list[dict]:
    """Per ``bucket_s`` of the soak: the arrivals and their TTFT tail (by the request's start), the
    client's requests in flight at the bucket's end, and what the probes saw meanwhile (CPU busy
    and steal %, the engine's waiting queue and batch, preemptions, the ingress's in-flight)."""
    probes = probes or {}
    metrics = probes.get("metrics", {})
    n = max(1, int(round(seconds / bucket_s)))
    rows = []
    ends = sorted(r["t"] + (r["e2e"] or 0.0) for r in requests)
    starts = sorted(r["t"] for r in requests)
    import bisect

    buckets: list[list[dict]] = [[] for _ in range(n)]
    for r in requests:
        buckets[min(n - 1, max(0, int(r["t"] // bucket_s)))].append(r)
    for i, rs in enumerate(buckets):
        lo, hi = i * bucket_s, (i + 1) * bucket_s
        ttfts = [r["ttft"] for r in rs if r.get("ttft") is not None]
        batch = [r["ttft"] for r in rs if r.get("ttft") is not None and r.get("tier") == "batch"]
        top = [r["ttft"] for r in rs if r.get("ttft") is not None and r.get("tier") == "premium"]
        idx = _at(probes, lo, hi)

        def vals(key: str, src: Optional[dict] = None) -> list[float]:
            src = probes if src is None else src
            return [src[key][j] for j in idx if src[key][j] is not None]

        row = {"t": lo, "arrivals": len(rs), "client_in_flight": bisect.bisect_left(starts, hi) - bisect.bisect_right(ends, hi),
               "ttft_p99_ms": _ms(pct(ttfts, 0.99)), "ttft_max_ms": _ms(max(ttfts, default=None)),
               "batch_ttft_max_ms": _ms(max(batch, default=None)), "premium_ttft_max_ms": _ms(max(top, default=None))}
        if idx:
            busy, steal = vals("cpu_busy_pct"), vals("cpu_steal_pct")
            row["cpu_busy_pct"] = round(sum(busy) / len(busy), 1) if busy else None
            row["cpu_steal_pct"] = round(sum(steal) / len(steal), 1) if steal else None
            for key, name in (("engine_waiting_max", "vllm:num_requests_waiting"),
                              ("engine_running_max", "vllm:num_requests_running"),
                              ("ingress_in_flight_max", "fleetserve_requests_in_flight")):
                xs = vals(name, metrics) if name in metrics else []
                row[key] = max(xs) if xs else None
            for key, name in (("engine_preemptions", "vllm:num_preemptions"),
                              ("fleet_preemptions", "fleetserve_fleet_preemptions")):
                xs = metrics.get(name) or []
                # counter increase over the bucket: from the last sample before it to its last sample
                before = [xs[j] for j in range(0, idx[0]) if xs[j] is not None]
                inside = [xs[j] for j in idx if xs[j] is not None]
                row[key] = (inside[-1] - (before[-1] if before else inside[0])) if inside else None
        rows.append(row)
    return rows


def add_window_context(rows: list[dict], probes: Optional[dict], window_s: float) -> None:
    """Each window's CPU steal (mean and max of the probe samples in it) and engine
    preemptions, so a window's tail can be read against the machine and the scheduler."""
    if not probes or not probes.get("t"):
        return
    pre = (probes.get("metrics") or {}).get("vllm:num_preemptions") or []
    for row in rows:
        idx = _at(probes, row["start_s"], row["start_s"] + window_s)
        steal = [probes["cpu_steal_pct"][j] for j in idx if probes["cpu_steal_pct"][j] is not None]
        row["cpu_steal_mean_pct"] = round(sum(steal) / len(steal), 1) if steal else None
        row["cpu_steal_max_pct"] = max(steal) if steal else None
        counts = [pre[j] for j in idx if j < len(pre) and pre[j] is not None]
        row["engine_preemptions"] = (counts[-1] - counts[0]) if len(counts) > 1 else None


def attribution(rows: list[dict]) -> dict:
    """Which context goes with the TTFT tail across buckets: the Spearman rank correlation of
    each bucket's max TTFT with its arrivals, the arrivals of the bucket before, CPU steal and
    busy, the engine's waiting queue and preemptions; and the ten worst buckets with that context."""
    from scipy.stats import spearmanr

    keys = ("arrivals", "arrivals_prev", "cpu_steal_pct", "cpu_busy_pct", "engine_waiting_max", "engine_preemptions",
            "fleet_preemptions", "ingress_in_flight_max", "client_in_flight")
    rows = [dict(r, arrivals_prev=rows[i - 1]["arrivals"] if i else None) for i, r in enumerate(rows)]
    corr = {}
    for k in keys:
        pairs = [(r["ttft_max_ms"], r[k]) for r in rows if r.get("ttft_max_ms") is not None and r.get(k) is not None]
        if len(pairs) >= 10 and len({p[0] for p in pairs}) > 1 and len({p[1] for p in pairs}) > 1:
            rho, pval = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
            corr[k] = {"rho": round(float(rho), 3), "p": float(f"{pval:.3g}"), "n": len(pairs)}
    worst = sorted((r for r in rows if r.get("ttft_max_ms") is not None), key=lambda r: -r["ttft_max_ms"])[:10]
    return {"spearman_vs_ttft_max": corr, "worst_buckets": worst}


def report(raw: dict, args) -> dict:
    requests = raw["requests"]
    rows = window_rows(requests, args.window_s, args.minutes * 60.0)
    fine = fine_series(requests, raw.get("probes"), getattr(args, "series_s", 10.0), args.minutes * 60.0)
    add_window_context(rows, raw.get("probes"), args.window_s)
    series = [Series(**s) for s in raw["memory"].values()]
    mem = [d for d in (drift(s, args.warmup_s) for s in series) if d is not None]
    mem.sort(key=lambda d: -(d.get("rss_last_mb") or 0))
    lat = latency_drift(rows, args.warmup_s)
    errors = sum(r["errors"] for r in rows)
    mem_drifts = [abs(d[k]) for d in mem for k in ("rss_drift_pct", "pss_drift_pct") if d.get(k) is not None]
    lat_drifts = [abs(v) for v in lat.values() if v is not None]
    return {
        "config": raw["config"], "capacity": raw["capacity"], "open_loop": raw.get("open_loop"),
        "offered_rps": raw["offered_rps"],
        "requests": len(requests), "errors": errors,
        "error_samples": [r["error"] or str(r["status"]) for r in requests if not (r["status"] == 200 and r["done"])][:20],
        "windows": rows, "latency_drift_pct": lat, "memory_drift": mem,
        "series": fine, "attribution": attribution(fine),
        "verdicts": {
            "errors_zero": errors == 0,
            "latency_flat": bool(lat_drifts) and max(lat_drifts) <= args.latency_drift_pct,
            "latency_max_drift_pct": max(lat_drifts) if lat_drifts else None,
            "memory_flat": bool(mem_drifts) and max(mem_drifts) <= args.memory_drift_pct,
            "memory_max_drift_pct": max(mem_drifts) if mem_drifts else None,
        },
    }


def _table(rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


def print_report(s: dict) -> None:
    if s["capacity"]["capacity_rps"] is not None:
        print(f"\nclosed-loop capacity {s['capacity']['capacity_rps']} req/s (ramp {[(x['concurrency'], x['rps']) for x in s['capacity']['steps']]})")
    if s.get("open_loop"):
        print(f"open-loop capacity {s['open_loop']['capacity_rps']} req/s (probes "
              f"{[(x['offered_rps'], x['ttft_p50_s'] and round(x['ttft_p50_s'], 3), x['passed']) for x in s['open_loop']['steps']]})")
    print(f"offered {s['offered_rps']} req/s; {s['requests']} requests, {s['errors']} errors")
    head = ("window", "start s", "reqs", "errors", "done/s", "tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
            "unary p50", "unary p99")
    rows = [head] + [(w["window"], w["start_s"], w["requests"], w["errors"], w["completed_rps"], w["tokens_per_s"],
                      w["ttft_p50_ms"], w["ttft_p99_ms"], w["tpot_p50_ms"], w["tpot_p99_ms"], w["e2e_p50_ms"],
                      w["e2e_p99_ms"]) for w in s["windows"]]
    print("latencies in ms")
    _table(rows)
    if any("cpu_steal_max_pct" in w for w in s["windows"]):
        print("context: " + "; ".join(f"window {w['window']}: steal mean {w.get('cpu_steal_mean_pct')} % max "
                                      f"{w.get('cpu_steal_max_pct')} %, engine preemptions {w.get('engine_preemptions')}"
                                      for w in s["windows"]))
    print("TTFT p50/p99 ms by tier:")
    for w in s["windows"]:
        print(f"  window {w['window']}: " + "; ".join(f"{t} {v[0]}/{v[1]}" for t, v in w.get("ttft_by_tier_ms", {}).items()))
    print("\nlatency drift, last vs first window after warm-up (%):", s["latency_drift_pct"])
    rows = [("process", "pid", "RSS first MB", "RSS last MB", "RSS drift %", "PSS drift %")]
    rows += [(d["label"], d["pid"], d.get("rss_first_mb"), d.get("rss_last_mb"), d.get("rss_drift_pct"),
              d.get("pss_drift_pct")) for d in s["memory_drift"]]
    print()
    _table(rows)
    att = s.get("attribution") or {}
    if att.get("spearman_vs_ttft_max"):
        print("\nSpearman rank correlation of a bucket's max TTFT with:")
        for k, v in att["spearman_vs_ttft_max"].items():
            print(f"  {k}: rho {v['rho']} (p {v['p']}, n {v['n']})")
    if att.get("worst_buckets"):
        print("worst buckets:")
        keys = ("t", "ttft_max_ms", "batch_ttft_max_ms", "premium_ttft_max_ms", "arrivals", "cpu_busy_pct",
                "cpu_steal_pct", "engine_waiting_max", "engine_preemptions", "fleet_preemptions", "client_in_flight")
        _table([keys] + [tuple(b.get(k) for k in keys) for b in att["worst_buckets"]])
    print("\nverdicts:", s["verdicts"])
    for e in s["error_samples"]:
        print("  error:", e)


def write_plot(raw: dict, s: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax3, ax2) = plt.subplots(3, 1, figsize=(11, 13))
    mids = [(w["start_s"] + s["config"]["window_s"] / 2) / 60 for w in s["windows"]]
    for key, style in (("ttft_p50_ms", "-o"), ("ttft_p99_ms", "--o"), ("tpot_p50_ms", "-s"), ("tpot_p99_ms", "--s"),
                       ("e2e_p50_ms", "-^"), ("e2e_p99_ms", "--^")):
        ys = [w[key] for w in s["windows"]]
        if any(y is not None for y in ys):
            ax1.plot(mids, ys, style, label=key.replace("_ms", "").replace("e2e", "unary e2e"))
    ax1.set_yscale("log")
    ax1.set_xlabel("minutes into the soak (window midpoints)")
    ax1.set_ylabel("ms")
    ax1.set_title(f"latency per window at {s['offered_rps']} req/s ({s['errors']} errors of {s['requests']})")
    ax1.legend(fontsize=8, ncol=3)
    fine = s.get("series") or []
    xs = [(r["t"] + s["config"].get("series_s", 10.0) / 2) / 60 for r in fine]
    ax3.plot(xs, [r["ttft_max_ms"] for r in fine], "-", lw=0.8, label="TTFT max (ms, left, log)")
    ax3.plot(xs, [r["premium_ttft_max_ms"] for r in fine], "-", lw=0.8, label="premium TTFT max (ms, left, log)")
    ax3.set_yscale("log")
    ax3.set_ylabel("ms")
    ax3.set_xlabel(f"minutes into the soak ({s['config'].get('series_s', 10.0):g} s buckets)")
    ax4 = ax3.twinx()
    for key, label in (("cpu_steal_pct", "CPU steal %"), ("engine_waiting_max", "engine waiting (max)"),
                       ("engine_preemptions", "engine preemptions"), ("arrivals", "arrivals")):
        ys = [r.get(key) for r in fine]
        if any(y is not None for y in ys):
            ax4.plot(xs, ys, ":", lw=0.8, label=label + " (right)")
    ax3.set_title("the tail against its context: arrivals, CPU steal, engine queue and preemptions")
    h1, l1 = ax3.get_legend_handles_labels()
    h2, l2 = ax4.get_legend_handles_labels()
    ax3.legend(h1 + h2, l1 + l2, fontsize=7, ncol=3, loc="upper left")
    top = sorted(raw["memory"].values(), key=lambda m: -max(m["rss"]))[:10]
    for m in top:
        line = ax2.plot([t / 60 for t in m["t"]], [v / 2**20 for v in m["rss"]], label=f"{m['label']} ({m['pid']})")[0]
        if all(v is not None for v in m["pss"]):
            ax2.plot([t / 60 for t in m["t"]], [v / 2**20 for v in m["pss"]], ":", color=line.get_color())
    ax2.set_xlabel("minutes into the soak (negative: ramp)")
    ax2.set_ylabel("MiB (solid RSS, dotted PSS)")
    ax2.set_title("memory of the 10 largest processes of the server's tree")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")
    return path
