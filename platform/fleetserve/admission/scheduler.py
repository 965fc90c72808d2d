"""The executor of the fleet admission policy: holds the queue and applies decisions.

The policy (``admission.decide``) is pure; this class owns the mutable parts: the queue of
waiting coroutines, what is running where, and calls to replicas. Replicas are reached only
through the injected :class:`ReplicaPool`, so the serving layer decides how stats are
gathered and how ``preempt`` reaches an engine.

Lifecycle of one request: ``await acquire(...)`` waits in the queue and returns a
:class:`Slot` (or raises RateLimitError / ServiceUnavailableError when shed);
``bind(request_id, replica)`` optionally reports where it actually runs; ``release(...)``
exactly once when it ends. The policy runs on every event (arrival, release, preemption
done; an arrival only when it could be dispatched or preempt) and, while anything is queued,
every ``tick_s`` from one ticker task, so deadlines
and replica-stat changes are noticed. (One ticker, not one poll per waiter: with hundreds
of queued requests per-waiter polling would cost O(queue^2) CPU per tick.)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Optional, Protocol, Sequence

from fleetserve.clock import Clock, SystemClock
from fleetserve.errors import RateLimitError, ServiceUnavailableError
from fleetserve.admission import policy as admission
from fleetserve.admission.policy import (
    AdmissionDecision,
    AdmissionSnapshot,
    AdmissionState,
    QueuedRequest,
    ReplicaCapacity,
    RunningRequest,
    Shed,
)
from fleetserve.admission.config import FleetSchedulingConfig

log = logging.getLogger(__name__)


class ReplicaPool(Protocol):
    """How the scheduler sees replicas. Implemented by the serving layer."""

    def capacity_snapshot(self) -> Sequence[ReplicaCapacity]:
        """Latest known load of every replica (cached; must not block)."""
        ...

    async def preempt(self, replica_id: Optional[str], request_id: str) -> bool:
        """Ask the engine running ``request_id`` to preempt it (tokens kept); ``replica_id`` may be None (unknown)."""
        ...


class SchedulerObserver(Protocol):
    """Receives scheduling events (for metrics). All methods must be cheap and never raise."""

    def dispatched(self, priority_class: int, waited_s: float) -> None: ...

    def shed(self, priority_class: int, status: int) -> None: ...

    def preempted(self, priority_class: int) -> None: ...


@dataclass(frozen=True)
class Slot:
    """Permission to send one request to the replicas."""

    request_id: str
    replica_hint: Optional[str]
    queued_s: float


@dataclass
class FleetCounters:
    dispatched: int = 0
    shed_429: int = 0
    shed_503: int = 0
    preempted: int = 0


def shed_error(shed: Shed) -> Exception:
    """The typed error a shed request's caller sees."""
    msg = f"server overloaded ({shed.reason}); retry later"
    if shed.status == admission.STATUS_RATE_LIMITED:
        return RateLimitError(msg, retry_after_s=shed.retry_after_s)
    return ServiceUnavailableError(msg, retry_after_s=shed.retry_after_s)


class FleetScheduler:
    """Cluster-wide admission queue for one ingress replica."""

    def __init__(
        self,
        config: FleetSchedulingConfig,
        pool: ReplicaPool,
        clock: Optional[Clock] = None,
        observer: Optional[SchedulerObserver] = None,
    ) -> None:
        self.config = config
        self._observer = observer
        self._pool = pool
        self._clock = clock or SystemClock()
        self._state = AdmissionState()
        self._queued: list[QueuedRequest] = []
        self._futures: dict[str, asyncio.Future] = {}
        self._running: dict[str, RunningRequest] = {}
        self._weights: dict[str, float] = {}
        self._mean_service_s = 1.0
        self.counters = FleetCounters()
        self._preempt_tasks: set[asyncio.Task] = set()
        self._ticker: Optional[asyncio.Task] = None

    # ---- introspection ----------------------------------------------------------------

    def queue_depths(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for q in self._queued:
            out[q.priority_class] = out.get(q.priority_class, 0) + 1
        return out

    def running(self) -> list[RunningRequest]:
        return list(self._running.values())

    def snapshot(self) -> AdmissionSnapshot:
        try:
            replicas = tuple(self._pool.capacity_snapshot())
        except Exception:  # a broken stats source must not take admission down; requests wait
            log.exception("replica capacity snapshot failed")
            replicas = ()
        return AdmissionSnapshot(tuple(self._queued), tuple(self._running.values()), replicas, self._mean_service_s)

    # ---- request lifecycle ------------------------------------------------------------

    async def acquire(
        self,
        request_id: str,
        tenant_id: str,
        priority_class: int,
        weight: float,
        prompt_tokens: int,
        max_tokens: int,
        timeout_s: Optional[float] = None,
    ) -> Slot:
        """Wait for a slot. Raises RateLimitError (429) or ServiceUnavailableError (503) when shed."""
        now = self._clock.now()
        if not self.config.enabled:
            return Slot(request_id, None, 0.0)
        timeout = timeout_s if timeout_s is not None else self.config.timeout_for(priority_class)
        req = QueuedRequest(request_id, tenant_id, priority_class, weight, prompt_tokens, max_tokens, now, now + timeout)
        snap = self.snapshot()
        verdict = admission.decide_enqueue(snap, req, self.config)
        if not verdict.accept:
            assert verdict.reject is not None
            self._count_shed(verdict.reject, priority_class)
            raise shed_error(verdict.reject)
        for victim in verdict.evict:
            self._shed(victim)
        self._state = admission.on_enqueue(self._state, snap, req)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queued.append(req)
        self._futures[request_id] = fut
        self._weights[request_id] = weight
        if admission.arrival_may_act(snap, req, self.config):
            self.pump()
        # else: the last round left nothing dispatchable and this request can neither run
        # nor preempt now; a flood's arrivals then cost no round over its whole backlog.
        self._ensure_ticker()
        try:
            return await fut
        except asyncio.CancelledError:
            self._abandon(request_id)
            raise

    def _ensure_ticker(self) -> None:
        if self._queued and (self._ticker is None or self._ticker.done()):
            self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def _tick_loop(self) -> None:
        try:
            while self._queued:
                await asyncio.sleep(self.config.tick_s)
                self.pump()
        except Exception:  # never let the ticker die silently with requests queued
            log.exception("fleet scheduler tick failed")
            self._ticker = None
            raise

    def bind(self, request_id: str, replica_id: str) -> None:
        """Record the replica that actually runs the request (the router may differ from the hint)."""
        r = self._running.get(request_id)
        if r is not None:
            self._running[request_id] = replace(r, replica_id=replica_id)

    def release(self, request_id: str, output_tokens: int) -> None:
        """The request finished (any outcome). Frees its slot and charges its output tokens."""
        r = self._running.pop(request_id, None)
        weight = self._weights.pop(request_id, 1.0)
        self._futures.pop(request_id, None)
        if r is None:
            self._abandon(request_id)
            return
        self._state = admission.on_complete(self._state, r, weight, output_tokens)
        duration = max(0.0, self._clock.now() - r.dispatched_at)
        self._mean_service_s = 0.8 * self._mean_service_s + 0.2 * duration
        self.pump()

    def _abandon(self, request_id: str) -> None:
        """A waiter went away (client disconnect): drop it from the queue or free its slot."""
        self._queued = [q for q in self._queued if q.request_id != request_id]
        fut = self._futures.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.cancel()
        if request_id in self._running:
            self._weights.setdefault(request_id, 1.0)
            self.release(request_id, 0)
        else:
            self._weights.pop(request_id, None)

    # ---- applying decisions ------------------------------------------------------------

    def pump(self) -> AdmissionDecision:
        """Run the policy once and apply its decision."""
        now = self._clock.now()
        decision = admission.decide(self.snapshot(), self._state, now, self.config)
        self._state = decision.state
        for s in decision.shed:
            self._shed(s)
        if not decision.dispatch:
            return decision if not decision.preempt else self._apply_preempt(decision)
        by_id = {q.request_id: q for q in self._queued}  # only when dispatching: the queue may hold thousands
        for d in decision.dispatch:
            q = by_id[d.request_id]
            self._queued.remove(q)
            self._running[q.request_id] = RunningRequest(q.request_id, q.tenant_id, q.priority_class, d.replica_id, now)
            self.counters.dispatched += 1
            if self._observer is not None:
                self._observer.dispatched(q.priority_class, now - q.enqueued_at)
            fut = self._futures.get(q.request_id)
            if fut is not None and not fut.done():
                fut.set_result(Slot(q.request_id, d.replica_id, now - q.enqueued_at))
        return self._apply_preempt(decision)

    def _apply_preempt(self, decision: AdmissionDecision) -> AdmissionDecision:
        for p in decision.preempt:
            if p.by_engine:
                self._mark_preempted(p.request_id)
            else:
                self._start_preempt(p.replica_id, p.request_id)
        return decision

    def _shed(self, s: Shed) -> None:
        cls = next((q.priority_class for q in self._queued if q.request_id == s.request_id), None)
        self._queued = [q for q in self._queued if q.request_id != s.request_id]
        self._weights.pop(s.request_id, None)
        self._count_shed(s, cls)
        fut = self._futures.pop(s.request_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(shed_error(s))

    def _count_shed(self, s: Shed, priority_class: Optional[int]) -> None:
        if s.status == admission.STATUS_RATE_LIMITED:
            self.counters.shed_429 += 1
        else:
            self.counters.shed_503 += 1
        if self._observer is not None and priority_class is not None:
            self._observer.shed(priority_class, s.status)

    def _start_preempt(self, replica_id: Optional[str], request_id: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # pump() called outside an event loop (pure tests); nothing to actuate
        task = loop.create_task(self._preempt(replica_id, request_id))
        self._preempt_tasks.add(task)
        task.add_done_callback(self._preempt_tasks.discard)

    async def _preempt(self, replica_id: Optional[str], request_id: str) -> None:
        try:
            ok = await self._pool.preempt(replica_id, request_id)
        except Exception:
            log.exception("preempt %s on %s failed", request_id, replica_id)
            ok = False
        if ok and self._mark_preempted(request_id):
            self.pump()

    def _mark_preempted(self, request_id: str) -> bool:
        r = self._running.get(request_id)
        if r is None:
            return False
        self._running[request_id] = replace(r, preempted=True)
        self.counters.preempted += 1
        if self._observer is not None:
            self._observer.preempted(r.priority_class)
        return True
