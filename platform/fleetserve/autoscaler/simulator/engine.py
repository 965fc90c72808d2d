"""The event loop: arrivals, completions, replica readiness, spot events and control ticks."""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import Deque, List, Optional, Protocol, Tuple

from fleetserve.autoscaler.simulator.config import SimConfig
from fleetserve.autoscaler.simulator.fleet import Fleet, Flight
from fleetserve.autoscaler.simulator.metrics import Recorder, SimResult
from fleetserve.autoscaler.simulator.scenarios import Scenario
from fleetserve.autoscaler.snapshot import CapacityType


class Controller(Protocol):
    """Turns the fleet's state into actions once per tick."""

    name: str

    def setup(self, sim: "Simulation") -> None: ...

    def tick(self, sim: "Simulation", now: float) -> None: ...


class Simulation:
    """One scenario against one controller. Deterministic for a given seed."""

    def __init__(self, scenario: Scenario, controller: Controller, cfg: Optional[SimConfig] = None, seed: int = 0):
        self.scenario = scenario
        self.controller = controller
        self.cfg = cfg or SimConfig()
        self.rng = random.Random(seed)
        self._heap: List[Tuple[float, int, str, object]] = []
        self._seq = 0
        self.fleet = Fleet(self.cfg, self.schedule)
        self.recorder = Recorder(self.cfg, scenario)
        self.fleet.on_finish = self.recorder.finish
        self._arrivals: Deque[float] = deque()  # arrival times within the rate window
        self._service: Deque[Tuple[float, float]] = deque()  # (finished at, duration) for 60 s
        self._service_sum = 0.0  # running sum of the durations in _service (O(1) mean per tick)
        self.now = 0.0

    def schedule(self, at: float, kind: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    # -- observations for controllers ----------------------------------------------------

    def arrival_rate(self) -> float:
        while self._arrivals and self._arrivals[0] < self.now - self.cfg.rate_window_s:
            self._arrivals.popleft()
        # Early on the window is only partly filled: divide by the time actually observed.
        window = min(self.cfg.rate_window_s, self.now) if self.now > 0 else self.cfg.rate_window_s
        return len(self._arrivals) / window

    def mean_service_time(self) -> Optional[float]:
        while self._service and self._service[0][0] < self.now - 60.0:
            self._service_sum -= self._service.popleft()[1]
        if not self._service:
            self._service_sum = 0.0  # drop accumulated float error
            return None
        return self._service_sum / len(self._service)

    # -- loop -------------------------------------------------------------------------

    def run(self) -> SimResult:
        sc, cfg = self.scenario, self.cfg
        for w in sc.waves:
            self.schedule(w.at, "wave", w)
        for m in sc.market:
            self.schedule(m.at, "market", m)
        self.controller.setup(self)
        self.schedule(0.0, "tick", None)
        reqs = sc.requests
        i, n = 0, len(reqs)
        horizon = sc.duration_s + cfg.client_timeout_s  # let the tail drain
        original_finish = self.fleet.on_finish

        def finish(f: Flight) -> None:
            if not f.lost:
                self._service.append((f.finished_at, f.finished_at - f.req.arrival))
                self._service_sum += f.finished_at - f.req.arrival
            original_finish(f)

        self.fleet.on_finish = finish
        while True:
            next_arrival = reqs[i].arrival if i < n else float("inf")
            next_event = self._heap[0][0] if self._heap else float("inf")
            if next_arrival <= next_event:
                if next_arrival == float("inf"):
                    break
                self.now = next_arrival
                req = reqs[i]
                i += 1
                f = Flight(req, queued_at=req.arrival)
                self.recorder.arrive(f)
                self._arrivals.append(req.arrival)
                self.fleet.queue.append(f)
                self.fleet.dispatch(self.now)
                continue
            at, _, kind, payload = heapq.heappop(self._heap)
            self.now = at
            if kind == "tick":
                if at > horizon or (i >= n and self.recorder.all_finished()):
                    continue  # stop ticking: nothing left to do
                self.controller.tick(self, at)
                self.recorder.sample(self, at)
                self.schedule(at + cfg.tick_s, "tick", None)
            elif kind == "done":
                f, run = payload
                self.fleet.done(f, run, at)
            elif kind == "ready":
                rid, epoch = payload
                self.fleet.ready(rid, epoch, at)
            elif kind == "migrate":
                self.fleet.migrate(payload, at)
            elif kind == "kill":
                self.fleet.kill(payload, at)
            elif kind == "notice":
                rid, deadline = payload
                if rid in self.fleet.replicas:
                    self.fleet.notices[rid] = deadline
                    self.fleet.acc.interruptions += 1
                    self.schedule(deadline, "kill", rid)
            elif kind == "wave":
                self._wave(payload, at)
            elif kind == "market":
                self.fleet.spot_available = payload.available
                if payload.price_ratio is not None:
                    self.fleet.spot_price_ratio = payload.price_ratio
            self.fleet.dispatch(self.now)
        self.fleet.close(self.now)
        for f in self.fleet.queue:  # never served: abandoned at the end of the run
            f.lost = True
            f.finished_at = self.now
            self.recorder.finish(f)
        return self.recorder.result(self.controller.name, self.fleet, self.now)

    def _wave(self, wave, now: float) -> None:
        spot = sorted(
            (r.rid for r in self.fleet.replicas.values() if r.ctype is CapacityType.SPOT and r.rid not in self.fleet.notices),
            key=lambda rid: int(rid[1:]),
        )
        for rid in spot:
            if self.rng.random() >= wave.fraction:
                continue
            notice_at = now + self.rng.random() * wave.spread_s
            self.schedule(notice_at, "notice", (rid, notice_at + wave.notice_s))
