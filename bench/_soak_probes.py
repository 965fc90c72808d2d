"""What the machine and the server were doing during a soak, every few seconds (bench/bench_soak.py).

A latency tail in one window has several possible causes on a small shared VM: a burst of
Poisson arrivals, the engine preempting low-tier requests for higher ones, the fleet queue
holding requests, or the machine itself (CPU stolen by the hypervisor, other processes).
:class:`ProbeSampler` records the evidence side by side so a window's tail can be attributed:

- CPU: busy and steal shares of the whole machine since the previous sample (``/proc/stat``);
- the server's own series from its private metrics listeners (``metrics.port`` and the next
  ``port_range - 1`` ports, scraped with the admin key): engine queue and batch
  (``vllm:num_requests_waiting`` / ``running``), engine preemptions, fleet-queue preemptions,
  requests in flight at the ingress.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running", "fleetserve_requests_in_flight")
COUNTERS = ("vllm:num_preemptions", "fleetserve_fleet_preemptions")  # family names (prometheus_client drops _total)


def read_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine from /proc/stat's first line."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def cpu_shares(prev: tuple[int, int, int], cur: tuple[int, int, int]) -> tuple[Optional[float], Optional[float]]:
    """(busy %, steal %) of the machine between two :func:`read_cpu` readings."""
    total = cur[2] - prev[2]
    if total <= 0:
        return None, None
    return round(100.0 * (cur[0] - prev[0]) / total, 1), round(100.0 * (cur[1] - prev[1]) / total, 1)


def parse_metrics(pages: list[str]) -> dict[str, float]:
    """Sum of each wanted gauge and counter over every page (all replicas, all labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {name: 0.0 for name in GAUGES + COUNTERS}
    for page in pages:
        try:
            families = list(text_string_to_metric_families(page))
        except ValueError:  # not a Prometheus page (another service on a port of the range)
            continue
        for fam in families:  # by sample name: the parser does not tie `x_total` to a family `x` with a colon
            for sample in fam.samples:
                name = sample.name.removesuffix("_total")
                if name in out and (sample.name == name or name in COUNTERS):
                    out[name] += sample.value
    return out


@dataclass
class ProbeSeries:
    t: list[float] = field(default_factory=list)
    cpu_busy_pct: list[Optional[float]] = field(default_factory=list)
    cpu_steal_pct: list[Optional[float]] = field(default_factory=list)
    metrics: dict[str, list[Optional[float]]] = field(default_factory=lambda: {n: [] for n in GAUGES + COUNTERS})


class ProbeSampler:
    """Samples CPU shares and the server's metrics every ``interval_s`` in a daemon thread."""

    def __init__(self, metrics_port: int, port_range: int, token: str, interval_s: float = 5.0,
                 t0: Optional[float] = None):
        self.ports = range(metrics_port, metrics_port + port_range)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.interval_s = interval_s
        self.t0 = time.monotonic() if t0 is None else t0
        self.series = ProbeSeries()
        self._cpu = read_cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-probes", daemon=True)

    def start(self) -> "ProbeSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=2.0) as http:
            while not self._stop.wait(self.interval_s):
                self.sample(http)

    def _pages(self, http) -> list[str]:
        import httpx

        pages = []
        for port in self.ports:
            try:
                r = http.get(f"http://127.0.0.1:{port}/metrics", headers=self.headers)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                pages.append(r.text)
        return pages

    def sample(self, http) -> None:
        cur = read_cpu()
        busy, steal = cpu_shares(self._cpu, cur)
        self._cpu = cur
        pages = self._pages(http)
        values = parse_metrics(pages) if pages else {}
        s = self.series
        s.t.append(round(time.monotonic() - self.t0, 1))
        s.cpu_busy_pct.append(busy)
        s.cpu_steal_pct.append(steal)
        for name in GAUGES + COUNTERS:
            s.metrics[name].append(values.get(name))
