"""Simulated fleet state: replicas, the router queue, and the requests in flight.

Only mechanics live here (admit, finish, migrate, kill, start, drain); *when* things
happen is the event loop's job (engine.py), and *what* to do is the controller's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Optional

from fleetserve.autoscaler.simulator.config import SimConfig
from fleetserve.autoscaler.simulator.workload import SimRequest
from fleetserve.autoscaler.snapshot import CapacityType, ReplicaState

Schedule = Callable[[float, str, object], None]  # (time, kind, payload)


@dataclass
class Flight:
    """One request's progress; survives migration between replicas."""

    req: SimRequest
    queued_at: float
    first_token_at: Optional[float] = None
    done_tokens: float = 0.0
    retries: int = 0
    finished_at: Optional[float] = None
    lost: bool = False
    # The current run on a replica:
    replica: Optional[str] = None
    run: int = 0  # bumped on every admission so stale completion events are ignored
    run_start: float = 0.0
    run_ttft: float = 0.0
    run_rate: float = 0.0
    run_first_new: bool = False  # this run produces the user's first token


@dataclass
class SimReplica:
    rid: str
    ctype: CapacityType
    state: ReplicaState
    since: float  # for replica-hour accounting
    becomes: Optional[ReplicaState] = None
    running: Dict[int, Flight] = field(default_factory=dict)
    to_pool: bool = False
    migrate_by: Optional[float] = None
    epoch: int = 0  # bumped when a pending READY event must be ignored


@dataclass
class Accounting:
    on_demand_s: float = 0.0
    spot_s: float = 0.0
    standby_s: float = 0.0
    cold_starts: int = 0
    cold_starts_spot: int = 0
    activations: int = 0
    drains: int = 0
    migrations: int = 0
    interruptions: int = 0
    failed_spot_starts: int = 0


class Fleet:
    def __init__(self, cfg: SimConfig, schedule: Schedule):
        self.cfg = cfg
        self.schedule = schedule
        self.replicas: Dict[str, SimReplica] = {}
        self.queue: Deque[Flight] = deque()
        self.acc = Accounting()
        self.spot_available = True
        self.spot_price_ratio = cfg.spot_price_ratio
        self.notices: Dict[str, float] = {}  # replica id -> reclaim deadline
        self._next_id = 0
        self.standby_cost_factor = 1.0  # set by a controller that keeps standbys
        self.on_finish: Callable[[Flight], None] = lambda f: None

    # -- accounting -------------------------------------------------------------------

    def _account(self, r: SimReplica, now: float) -> None:
        dt = now - r.since
        if r.state is ReplicaState.WARM_STANDBY:
            self.acc.standby_s += dt
        elif r.ctype is CapacityType.SPOT:
            self.acc.spot_s += dt
        else:
            self.acc.on_demand_s += dt
        r.since = now

    def _set_state(self, r: SimReplica, state: ReplicaState, now: float) -> None:
        self._account(r, now)
        r.state = state

    def _remove(self, r: SimReplica, now: float) -> None:
        self._account(r, now)
        del self.replicas[r.rid]
        self.notices.pop(r.rid, None)

    def close(self, now: float) -> None:
        for r in list(self.replicas.values()):
            self._account(r, now)

    # -- lifecycle --------------------------------------------------------------------

    def start(self, ctype: CapacityType, now: float, becomes: ReplicaState, ready_now: bool = False) -> Optional[str]:
        if ctype is CapacityType.SPOT and not self.spot_available:
            self.acc.failed_spot_starts += 1
            return None
        rid = f"r{self._next_id}"
        self._next_id += 1
        if ready_now:
            self.replicas[rid] = SimReplica(rid, ctype, becomes, now)
            return rid
        r = SimReplica(rid, ctype, ReplicaState.STARTING, now, becomes=becomes)
        self.replicas[rid] = r
        self.acc.cold_starts += 1
        self.acc.cold_starts_spot += int(ctype is CapacityType.SPOT)
        self.schedule(now + self.cfg.cold_start_s, "ready", (rid, r.epoch))
        return rid

    def activate(self, rid: str, now: float) -> None:
        r = self.replicas.get(rid)
        if r is None or r.state is not ReplicaState.WARM_STANDBY:
            return
        self._set_state(r, ReplicaState.STARTING, now)
        r.becomes = ReplicaState.ACTIVE
        r.epoch += 1
        self.acc.activations += 1
        self.schedule(now + self.cfg.activation_s, "ready", (rid, r.epoch))

    def ready(self, rid: str, epoch: int, now: float) -> None:
        r = self.replicas.get(rid)
        if r is None or r.state is not ReplicaState.STARTING or r.epoch != epoch:
            return
        self._set_state(r, r.becomes or ReplicaState.ACTIVE, now)
        r.becomes = None

    def drain(self, rid: str, now: float, migrate_by: Optional[float] = None, to_pool: bool = False,
              kill_after: Optional[float] = None) -> None:
        r = self.replicas.get(rid)
        if r is None:
            return
        if r.state in (ReplicaState.STARTING, ReplicaState.WARM_STANDBY):
            self._remove(r, now)  # nothing to drain: stop (or cancel the start) now
            return
        if r.state is ReplicaState.ACTIVE:
            self.acc.drains += 1
            self._set_state(r, ReplicaState.DRAINING, now)
            r.to_pool = to_pool
            if kill_after is not None:
                self.schedule(now + kill_after, "kill", rid)
        if migrate_by is not None and (r.migrate_by is None or migrate_by < r.migrate_by):
            r.migrate_by = migrate_by
            self.schedule(max(now, migrate_by), "migrate", rid)
        self._maybe_finish_drain(r, now)

    def _maybe_finish_drain(self, r: SimReplica, now: float) -> None:
        if r.state is not ReplicaState.DRAINING or r.running:
            return
        if r.to_pool and r.rid not in self.notices:
            self._set_state(r, ReplicaState.WARM_STANDBY, now)
            r.to_pool = False
            r.migrate_by = None
        else:
            self._remove(r, now)

    def migrate(self, rid: str, now: float) -> None:
        """Re-queue everything still running on ``rid`` (front of the queue: they waited already)."""
        r = self.replicas.get(rid)
        if r is None or r.state is not ReplicaState.DRAINING:
            return
        for f in sorted(r.running.values(), key=lambda f: f.req.rid, reverse=True):
            self._preempt(f, now)
            f.retries += 1
            self.acc.migrations += 1
            self.queue.appendleft(f)
        r.running.clear()
        self._maybe_finish_drain(r, now)

    def kill(self, rid: str, now: float) -> None:
        """The replica vanishes (reclaimed, or killed after the graceful timeout)."""
        r = self.replicas.get(rid)
        if r is None:
            return
        for f in r.running.values():
            f.lost = True
            f.replica = None
            f.finished_at = now
            self.on_finish(f)
        r.running.clear()
        self._remove(r, now)

    def _preempt(self, f: Flight, now: float) -> None:
        first_at = f.run_start + f.run_ttft
        if now >= first_at:
            if f.run_first_new:
                f.first_token_at = first_at
            remaining = f.req.output_tokens - f.done_tokens
            f.done_tokens += min(remaining - 1, (now - first_at) * f.run_rate)
        f.replica = None
        f.run += 1
        f.queued_at = now

    # -- requests -------------------------------------------------------------------------

    def dispatch(self, now: float) -> None:
        """Admit queued requests to the least-loaded active replicas with a free slot."""
        if not self.queue:
            return
        slots = self.cfg.slots
        open_ = [r for r in self.replicas.values() if r.state is ReplicaState.ACTIVE and len(r.running) < slots]
        while self.queue and open_:
            f = self.queue.popleft()
            if now - f.queued_at > self.cfg.client_timeout_s and f.first_token_at is None:
                f.lost = True
                f.finished_at = now
                self.on_finish(f)
                continue
            r = min(open_, key=lambda r: (len(r.running), r.rid))
            self._admit(f, r, now)
            if len(r.running) >= slots:
                open_.remove(r)

    def _admit(self, f: Flight, r: SimReplica, now: float) -> None:
        curve = self.cfg.curve
        c = len(r.running) + 1
        remaining = f.req.output_tokens - f.done_tokens
        f.replica = r.rid
        f.run += 1
        f.run_start = now
        # A migrated request re-prefills its prompt plus what it had generated.
        f.run_ttft = curve.ttft_s(c, f.req.prompt_tokens + int(f.done_tokens))
        f.run_rate = curve.per_sequence_tok_s(c)
        f.run_first_new = f.first_token_at is None
        r.running[f.req.rid] = f
        self.schedule(now + f.run_ttft + remaining / f.run_rate, "done", (f, f.run))

    def done(self, f: Flight, run: int, now: float) -> None:
        if f.run != run or f.replica is None:
            return  # migrated or killed since
        r = self.replicas[f.replica]
        del r.running[f.req.rid]
        if f.run_first_new:
            f.first_token_at = f.run_start + f.run_ttft
        f.finished_at = now
        f.replica = None
        self.on_finish(f)
        self._maybe_finish_drain(r, now)

    # -- views ----------------------------------------------------------------------------

    def count(self, state: ReplicaState, becomes: Optional[ReplicaState] = None) -> int:
        return sum(1 for r in self.replicas.values() if r.state is state and (becomes is None or r.becomes is becomes))

    def running(self) -> int:
        return sum(len(r.running) for r in self.replicas.values())
