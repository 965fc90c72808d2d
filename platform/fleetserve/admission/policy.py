"""The cluster-wide admission policy: who gets the next replica slot, who is shed, who is preempted.

Pure functions over typed snapshots; :mod:`fleetserve.admission.scheduler` applies the
decisions. Rules, in the order ``decide`` applies them:

1. **Deadlines.** A queued request past its deadline is shed with 503 + Retry-After.
2. **Dispatch while a replica has room.** A replica has room when it is healthy and
   accepting, its KV usage is under the watermark, its engine queue is short, and the
   fleet runs fewer than ``max_inflight_per_replica`` (non-preempted) requests on it.
   **Trunk reservation:** a request of class c is dispatched only while fewer than
   ``class_slot_share[c] * max_inflight_per_replica`` slots are busy, so the top slots stay
   free for higher classes, which then start at once (no wait for a completion or a
   preemption). Each dispatch goes to the replica with the most room (a hint for the
   replica router).
3. **Between classes: strict priority** (lower class number first), except the
   **starvation guard**: a lower class whose oldest request waited longer than
   ``starvation_max_wait_s``, or that saw ``starvation_every_k`` dispatches of other
   classes while waiting, gets the next slot.
4. **Within a class: VTC fair share** (see ``fair_share``); a tenant's requests stay FIFO.
5. **Preemption.** If requests still wait and no replica has room, running requests of a
   *lower* class than a waiting one are preempted (lowest class first, then the most
   recently dispatched, which loses the least work), one per waiting request, minus
   preemptions already asked for and not yet expired. With ``preempt_via="engine"`` the
   waiter is dispatched in the same decision to the victim's replica (``Preempt.by_engine``):
   that engine's priority scheduler makes the room at its next step, so the higher class
   never waits for a preemption round trip.

``decide_enqueue`` bounds the queues: a full class queue rejects the newcomer (429); a
full fleet queue sheds the newest request of the lowest class below the newcomer (503),
or rejects the newcomer (429) when there is none. The ``fcfs`` policy (for comparison)
keeps one arrival-ordered queue, never preempts and never displaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

from fleetserve.admission import fair_share
from fleetserve.admission.config import FleetSchedulingConfig
from fleetserve.admission.fair_share import VtcState

STATUS_RATE_LIMITED = 429
STATUS_UNAVAILABLE = 503


@dataclass(frozen=True, eq=False)
class QueuedRequest:
    """A request waiting in the fleet queue. Compared by identity (each is one request):
    ``list.remove`` on a queue of thousands then never calls a field-wise ``__eq__``."""

    request_id: str
    tenant_id: str
    priority_class: int
    weight: float
    prompt_tokens: int
    max_tokens: int
    enqueued_at: float
    deadline: float


@dataclass(frozen=True)
class RunningRequest:
    """A request this scheduler dispatched and that has not completed yet."""

    request_id: str
    tenant_id: str
    priority_class: int
    replica_id: Optional[str]
    dispatched_at: float
    preempted: bool = False


@dataclass(frozen=True)
class ReplicaCapacity:
    """Live load of one replica, as reported by its engine (see EngineStats)."""

    replica_id: str
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    healthy: bool = True
    accepting: bool = True  # False while draining or sleeping


@dataclass(frozen=True)
class AdmissionSnapshot:
    """Everything ``decide`` looks at. ``queued`` is in arrival order."""

    queued: tuple[QueuedRequest, ...]
    running: tuple[RunningRequest, ...]
    replicas: tuple[ReplicaCapacity, ...]
    mean_service_s: float = 1.0  # recent mean request duration, for Retry-After estimates


@dataclass(frozen=True)
class AdmissionState:
    """What the policy remembers between decisions."""

    vtc: Mapping[int, VtcState] = field(default_factory=dict)
    # Per class: dispatches of other classes since this class was last served while waiting.
    skipped: Mapping[int, int] = field(default_factory=dict)
    # request_id -> time the preemption was asked for (expires after preempt_cooldown_s).
    pending_preemptions: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Dispatch:
    request_id: str
    replica_id: Optional[str]


@dataclass(frozen=True)
class Shed:
    request_id: str
    status: int  # 429 or 503
    retry_after_s: float
    reason: str


@dataclass(frozen=True)
class Preempt:
    request_id: str
    replica_id: Optional[str]
    # True: the engine preempts by itself for a waiter dispatched in the same decision; the
    # executor only records the victim as preempted. False: the executor asks the replica.
    by_engine: bool = False


@dataclass(frozen=True)
class AdmissionDecision:
    dispatch: tuple[Dispatch, ...]
    shed: tuple[Shed, ...]
    preempt: tuple[Preempt, ...]
    state: AdmissionState


@dataclass(frozen=True)
class EnqueueDecision:
    accept: bool
    reject: Optional[Shed]  # for the newcomer when not accepted
    evict: tuple[Shed, ...]  # already-queued requests displaced by the newcomer


# ---- helpers ------------------------------------------------------------------------


def retry_after(snapshot: AdmissionSnapshot, config: FleetSchedulingConfig, priority_class: int) -> float:
    """Time until the queue ahead of this class would drain at full fleet capacity."""
    ahead = sum(1 for q in snapshot.queued if q.priority_class <= priority_class or config.policy == "fcfs")
    slots = max(1, sum(1 for r in snapshot.replicas if r.healthy) * config.inflight)
    est = snapshot.mean_service_s * (1 + ahead / slots)
    return min(config.retry_after_max_s, max(config.retry_after_min_s, est))


def free_slots(snapshot: AdmissionSnapshot, config: FleetSchedulingConfig) -> dict[str, int]:
    """Replica id -> requests the fleet may still dispatch to it."""
    active: dict[Optional[str], int] = {}
    preempted: dict[Optional[str], int] = {}
    for r in snapshot.running:
        bucket = preempted if r.preempted else active
        bucket[r.replica_id] = bucket.get(r.replica_id, 0) + 1
    out: dict[str, int] = {}
    for rep in snapshot.replicas:
        # Preempted requests wait inside the engine; they are not the engine's backlog of new work.
        engine_waiting = max(0, rep.num_waiting - preempted.get(rep.replica_id, 0))
        room = config.inflight - active.get(rep.replica_id, 0)
        if not (rep.healthy and rep.accepting) or rep.kv_usage >= config.kv_high_watermark:
            room = 0
        if engine_waiting >= config.max_waiting_per_replica and config.max_waiting_per_replica > 0:
            room = 0
        out[rep.replica_id] = max(0, room)
    # Requests whose replica is unknown still occupy some replica: charge the emptiest.
    for _ in range(active.get(None, 0)):
        best = max(out, key=lambda k: out[k], default=None)
        if best is None or out[best] == 0:
            break
        out[best] -= 1
    return out


def on_enqueue(state: AdmissionState, snapshot: AdmissionSnapshot, request: QueuedRequest) -> AdmissionState:
    """VTC lift for a tenant that becomes backlogged; call before adding ``request`` to the queue."""
    cls = request.priority_class
    backlogged = {q.tenant_id for q in snapshot.queued if q.priority_class == cls}
    vtc = fair_share.on_arrival(state.vtc.get(cls, VtcState()), request.tenant_id, backlogged)
    return replace(state, vtc={**state.vtc, cls: vtc})


def on_complete(state: AdmissionState, request: RunningRequest, weight: float, output_tokens: int) -> AdmissionState:
    """Charge the output tokens of a finished request to its tenant's counter."""
    cls = request.priority_class
    vtc = fair_share.charge(state.vtc.get(cls, VtcState()), request.tenant_id, output_tokens, weight)
    pending = {k: v for k, v in state.pending_preemptions.items() if k != request.request_id}
    return replace(state, vtc={**state.vtc, cls: vtc}, pending_preemptions=pending)


# ---- enqueue ------------------------------------------------------------------------


def decide_enqueue(
    snapshot: AdmissionSnapshot, request: QueuedRequest, config: FleetSchedulingConfig
) -> EnqueueDecision:
    """Accept ``request`` into the queue, possibly displacing lower-class requests."""
    cls = request.priority_class
    if config.policy == "fcfs":
        same_class = len(snapshot.queued)
    else:
        same_class = [q.priority_class for q in snapshot.queued].count(cls)
    if same_class >= config.max_queue_per_class:
        return EnqueueDecision(False, _reject(snapshot, config, request, "class queue full"), ())
    if len(snapshot.queued) < config.max_queue_total:
        return EnqueueDecision(True, None, ())
    lower = [q for q in snapshot.queued if q.priority_class > cls]
    if config.policy == "fcfs" or not lower:
        return EnqueueDecision(False, _reject(snapshot, config, request, "fleet queue full"), ())
    lowest = max(q.priority_class for q in lower)
    victim = max((q for q in lower if q.priority_class == lowest), key=lambda q: q.enqueued_at)
    shed = Shed(victim.request_id, STATUS_UNAVAILABLE, retry_after(snapshot, config, lowest), "shed for higher class")
    return EnqueueDecision(True, None, (shed,))


def _reject(snapshot: AdmissionSnapshot, config: FleetSchedulingConfig, request: QueuedRequest, reason: str) -> Shed:
    return Shed(request.request_id, STATUS_RATE_LIMITED, retry_after(snapshot, config, request.priority_class), reason)


# ---- decide -------------------------------------------------------------------------


def decide(
    snapshot: AdmissionSnapshot, state: AdmissionState, now: float, config: FleetSchedulingConfig
) -> AdmissionDecision:
    """One round of the policy: expire, dispatch, then preempt. Returns the new state."""
    shed: list[Shed] = []
    queued: list[QueuedRequest] = []
    for q in snapshot.queued:
        if now >= q.deadline:
            shed.append(Shed(q.request_id, STATUS_UNAVAILABLE, retry_after(snapshot, config, q.priority_class), "queue timeout"))
        else:
            queued.append(q)
    free = free_slots(snapshot, config)
    dispatch: list[Dispatch] = []
    if config.policy == "fcfs":
        while queued:
            if not any(_replica_for(free, config, c) is not None for c in {q.priority_class for q in queued}):
                break
            chosen = queued.pop(0)
            replica = _replica_for(free, config, chosen.priority_class)
            assert replica is not None
            free[replica] -= 1
            dispatch.append(Dispatch(chosen.request_id, replica))
    else:
        # Per class, in arrival order: each dispatch then costs O(classes + its class's
        # queue), not several passes over the whole queue (a flood may hold thousands).
        by_class: dict[int, list[QueuedRequest]] = {}
        for q in queued:
            by_class.setdefault(q.priority_class, []).append(q)
        while by_class:
            fits = {c for c in by_class if _replica_for(free, config, c) is not None}
            if not fits:
                break
            chosen, state = _choose(by_class, fits, state, now, config)
            replica = _replica_for(free, config, chosen.priority_class)
            assert replica is not None
            free[replica] -= 1
            dispatch.append(Dispatch(chosen.request_id, replica))
        if dispatch:
            queued = [q for qs in by_class.values() for q in qs]
    preempt, state = _preemptions(snapshot, queued, state, now, config)
    dispatch.extend(Dispatch(waiter, p.replica_id) for waiter, p in preempt if p.by_engine)
    return AdmissionDecision(tuple(dispatch), tuple(shed), tuple(p for _, p in preempt), state)


def arrival_may_act(snapshot: AdmissionSnapshot, request: QueuedRequest, config: FleetSchedulingConfig) -> bool:
    """Whether a round of ``decide`` right after ``request`` is queued could do anything the
    previous round did not: dispatch it (a replica has room for its class) or preempt for
    it (a running request of a worse class). False lets the executor skip that round; its
    periodic rounds still expire deadlines and notice new replica room."""
    if _replica_for(free_slots(snapshot, config), config, request.priority_class) is not None:
        return True
    if config.policy == "fcfs" or not config.preemption:
        return False
    return any(not r.preempted and r.priority_class > request.priority_class for r in snapshot.running)


def _accepting(snapshot: AdmissionSnapshot, config: FleetSchedulingConfig) -> set[str]:
    """Replicas that may take a request displacing a lower class (healthy, accepting, KV below the watermark)."""
    return {
        r.replica_id for r in snapshot.replicas
        if r.healthy and r.accepting and r.kv_usage < config.kv_high_watermark
    }


def _replica_for(free: dict[str, int], config: FleetSchedulingConfig, priority_class: int) -> Optional[str]:
    """The replica with the most room that a request of this class may use (trunk reservation)."""
    cap = config.slot_cap(priority_class)
    usable = [r for r in sorted(free) if free[r] > 0 and config.inflight - free[r] < cap]
    return max(usable, key=lambda r: free[r], default=None)


def _choose(
    by_class: dict[int, list[QueuedRequest]], fits: set[int], state: AdmissionState, now: float,
    config: FleetSchedulingConfig,
) -> tuple[QueuedRequest, AdmissionState]:
    """Take the next request among classes in ``fits`` out of ``by_class`` (per class, in
    arrival order); updates VTC and starvation counters."""
    cls = _choose_class({c: by_class[c][0] for c in fits}, state, now, config)
    in_class = by_class[cls]
    vtc = state.vtc.get(cls, VtcState())
    tenant = fair_share.pick(vtc, {q.tenant_id for q in in_class})
    chosen = next(q for q in in_class if q.tenant_id == tenant)
    in_class.remove(chosen)
    if not in_class:
        del by_class[cls]
    vtc = fair_share.charge(vtc, tenant, chosen.prompt_tokens, chosen.weight, served=True)
    skipped = {c: state.skipped.get(c, 0) + 1 for c in by_class if c != cls}
    return chosen, replace(state, vtc={**state.vtc, cls: vtc}, skipped=skipped)


def _choose_class(heads: dict[int, QueuedRequest], state: AdmissionState, now: float, config: FleetSchedulingConfig) -> int:
    """``heads``: class -> its oldest queued request, for the classes that may dispatch now."""
    top = min(heads)
    starved = []
    for cls, head in heads.items():
        if cls == top:
            continue
        waited = now - head.enqueued_at
        by_wait = config.starvation_max_wait_s is not None and waited > config.starvation_max_wait_s
        by_count = config.starvation_every_k is not None and state.skipped.get(cls, 0) >= config.starvation_every_k
        if by_wait or by_count:
            starved.append((head.enqueued_at, cls))
    return min(starved)[1] if starved else top


def _preemptions(
    snapshot: AdmissionSnapshot, queued: list[QueuedRequest], state: AdmissionState, now: float,
    config: FleetSchedulingConfig,
) -> tuple[list[tuple[str, Preempt]], AdmissionState]:
    """(waiter id, preemption for it) pairs, in waiter priority order."""
    pending = {k: t for k, t in state.pending_preemptions.items() if now - t < config.preempt_cooldown_s}
    if config.policy == "fcfs" or not config.preemption or not queued:
        return [], replace(state, pending_preemptions=pending)
    preempted_on: dict[Optional[str], int] = {}
    for r in snapshot.running:
        if r.preempted:
            preempted_on[r.replica_id] = preempted_on.get(r.replica_id, 0) + 1
    healthy = {r.replica_id for r in snapshot.replicas if r.healthy}
    accepting = _accepting(snapshot, config)
    candidates = [
        r for r in snapshot.running
        if not r.preempted and r.request_id not in pending and (r.replica_id is None or r.replica_id in healthy)
    ]
    if not candidates:
        return [], replace(state, pending_preemptions=pending)
    # Lowest class first, then most recently dispatched (it has done the least work).
    candidates.sort(key=lambda r: (-r.priority_class, -r.dispatched_at, r.request_id))
    # Only waiters of a better class than some candidate can preempt; they sort before all
    # others, so this prefix is all the loop below could use (the flood's own backlog is
    # skipped without sorting it on every round).
    lowest_running = candidates[0].priority_class
    waiters = sorted((q for q in queued if q.priority_class < lowest_running), key=lambda q: (q.priority_class, q.enqueued_at))
    budget = len(pending)  # waiting requests already covered by an in-progress preemption
    out: list[tuple[str, Preempt]] = []
    for waiter in waiters:
        if budget > 0:
            budget -= 1
            continue
        victim = next(
            (
                r for r in candidates
                if r.priority_class > waiter.priority_class
                and preempted_on.get(r.replica_id, 0) < config.max_preempted_per_replica
            ),
            None,
        )
        if victim is None:
            break  # waiters are in priority order: later ones cannot preempt anything either
        candidates.remove(victim)
        preempted_on[victim.replica_id] = preempted_on.get(victim.replica_id, 0) + 1
        by_engine = config.preempt_via == "engine" and victim.replica_id in accepting
        if not by_engine:
            pending[victim.request_id] = now  # the executor asks the replica; wait for it
        out.append((waiter.request_id, Preempt(victim.request_id, victim.replica_id, by_engine)))
    return out, replace(state, pending_preemptions=pending)
