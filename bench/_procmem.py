"""RSS/PSS of every process of a tree over time (bench/bench_soak.py).

A background thread samples the root process and all its descendants (for ``fleetserve
serve``: the CLI driver, GCS, raylet, Ray's workers: the Serve controller, proxies, the
ingress and model replicas, engine child processes, haproxy) every ``interval_s``. PSS comes
from ``memory_full_info`` (Linux smaps_rollup); where it cannot be read it is None.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import psutil


def label(proc: psutil.Process) -> str:
    """A readable name: Ray sets worker titles (``ray::ServeReplica:app:ingress``)."""
    try:
        cmd = proc.cmdline()
    except (psutil.Error, OSError):
        cmd = []
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split(" ")[0][:80]
    name = proc.name()
    if name.startswith("python") and len(cmd) > 2 and cmd[1] == "-c":  # a spawned child (the engine core)
        return f"{name} -c {cmd[2][:50]}"
    if name.startswith("python") and len(cmd) > 1:
        tail = next((c for c in cmd[1:] if not c.startswith("-")), cmd[1])
        return f"{name} {tail.rsplit('/', 1)[-1]}"[:80]
    return name[:80]


@dataclass
class Series:
    pid: int
    label: str
    t: list[float] = field(default_factory=list)  # seconds since the sampler started
    rss: list[int] = field(default_factory=list)
    pss: list[Optional[int]] = field(default_factory=list)


class TreeSampler:
    """Samples ``root_pid``'s tree in a daemon thread until :meth:`stop`."""

    def __init__(self, root_pid: int, interval_s: float = 10.0):
        self.root = psutil.Process(root_pid)
        self.interval_s = interval_s
        self.series: dict[int, Series] = {}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-mem", daemon=True)

    def start(self) -> "TreeSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        for p in procs:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    try:
                        pss: Optional[int] = p.memory_full_info().pss
                    except (psutil.AccessDenied, AttributeError):
                        pss = None
                    s = self.series.get(p.pid)
                    if s is None:
                        s = self.series[p.pid] = Series(p.pid, label(p))
            except psutil.Error:  # exited between listing and reading
                continue
            s.t.append(round(now, 1))
            s.rss.append(rss)
            s.pss.append(pss)


def drift(series: Series, after_s: float, edge: int = 3) -> Optional[dict]:
    """Memory drift of one process, warm-up (the first ``after_s``) excluded: the mean of the
    last ``edge`` samples over the mean of the first ``edge`` after warm-up, for RSS and PSS.
    None when the process has too few samples after warm-up (it came or went mid-run)."""
    idx = [i for i, t in enumerate(series.t) if t >= after_s]
    if len(idx) < 2 * edge:
        return None
    out: dict = {"pid": series.pid, "label": series.label, "samples": len(idx)}
    for kind in ("rss", "pss"):
        vals = [getattr(series, kind)[i] for i in idx]
        if any(v is None for v in vals):
            out[f"{kind}_drift_pct"] = None
            continue
        first, last = sum(vals[:edge]) / edge, sum(vals[-edge:]) / edge
        out[f"{kind}_first_mb"] = round(first / 2**20, 1)
        out[f"{kind}_last_mb"] = round(last / 2**20, 1)
        out[f"{kind}_drift_pct"] = round(100.0 * (last - first) / first, 2) if first else None
    return out
