"""Iteration-level continuous batching with chunked prefill and priority preemption.

Each step the scheduler hands out a token budget (``max_num_batched_tokens``) and up to
``max_num_seqs`` sequence slots, in four phases:

1. ``_preempt_for_priority``: a waiting request of a strictly better priority class than
   some running one, with no room to start, evicts the worst running request(s).
2. ``_schedule_running``: running requests, best first, get their next tokens (one decode
   token, or the next prefill chunk). When blocks run out, the worst running request
   (lowest priority, latest arrival) is preempted. Prefill chunks of a class worse than
   the best waiting request are deferred to phase 4.
3. ``_schedule_waiting``: waiting and swapped requests are admitted in (priority, arrival)
   order while budget, slots and blocks last; a head that does not fit blocks the rest, so
   a later or lower-priority request never jumps the queue.
4. ``_schedule_deferred``: deferred prefill chunks take whatever budget and blocks are left.

With ``isolate_priority_prefill``, when a waiting request of class p can start and some
running request is of a worse class, the step runs class p and better only (their running
requests, then p's waiting ones): the new request's first token costs a small step instead
of a batch-wide one. At most ``max_consecutive_isolated`` such steps in a row (default 2: a
second arrival during the first's isolated step gets one too), so worse classes keep at
least one step in every ``max_consecutive_isolated + 1`` whatever the arrival rate of better ones.

``schedule_side_prefill`` starts such a request in the middle of a step instead: the engine
pauses the step's forward pass between two layers and runs a step holding only the new
requests' prefill (fresh WAITING requests of that one class, admitted without preempting
anyone), so the first token does not wait for the rest of the step either. Nothing of the
paused step is touched: its requests keep their blocks, and only free blocks are allocated.
With ``same_class_side_prefill_max`` (a class number), a fresh request of that class or
better also gets a side prefill when nothing running is of a better class than its own: a
premium arrival then does not wait for a step of other premium requests' decodes either
(under premium's own load that wait, not the flood, is most of its TTFT tail).

Every request keeps its output tokens across preemption: with ``recompute`` its prompt and
generated tokens are prefilled again; with ``swap`` its blocks go to host memory and back.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal, Optional

from fleetserve.engine.core.kv_cache_manager import NO_HIT, KVCacheManager
from fleetserve.engine.core.request import QUEUED, Request, RequestStatus

_SORT_KEY = attrgetter("sort_key")


@dataclass
class ScheduledItem:
    """``num_new_tokens`` tokens of ``request`` starting at position ``start_pos``."""

    request: Request
    start_pos: int
    num_new_tokens: int
    needs_logits: bool

    @property
    def token_ids(self) -> list[int]:
        return self.request.all_token_ids[self.start_pos:self.start_pos + self.num_new_tokens]


@dataclass
class SchedulerOutput:
    """What one step runs. Swaps must be applied, out before in, before the forward pass."""

    items: list[ScheduledItem] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device, host)
    swap_in: list[tuple[int, int]] = field(default_factory=list)   # (host, device)
    num_batched_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.items and not self.swap_out and not self.swap_in


def choose_victim(running: list[Request]) -> Request:
    """The request to preempt: lowest priority class (highest value), latest arrival."""
    return max(running, key=_SORT_KEY)


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        preemption_mode: Literal["recompute", "swap"] = "recompute",
        watermark_blocks: Optional[int] = None,
        isolate_priority_prefill: bool = False,
        side_prefill: bool = False,
        max_consecutive_isolated: int = 1,
        same_class_side_prefill_max: Optional[int] = None,
    ):
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.preemption_mode = preemption_mode
        self.isolate_priority_prefill = isolate_priority_prefill
        self.num_isolated_steps = 0
        self.side_prefill = side_prefill
        self.num_side_prefills = 0
        self.same_class_side_prefill_max = same_class_side_prefill_max
        self.max_consecutive_isolated = max(1, max_consecutive_isolated)
        self._isolated_run = 0  # isolated steps since the last normal one
        # Blocks kept free when admitting new work while others run, so running decodes
        # do not immediately preempt what was just admitted.
        self.watermark_blocks = (
            watermark_blocks if watermark_blocks is not None else max(1, kv.num_blocks // 100)
        )
        self.waiting: list[Request] = []  # heap by (priority, arrival, id)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self._pending_swap_out: list[tuple[int, int]] = []  # from preempt() between steps
        self._pending_preempted: list[Request] = []

    # ---------------------------------------------------------------- public API
    def add(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        heapq.heappush(self.waiting, request)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    @property
    def num_waiting(self) -> int:
        return sum(1 for r in self.waiting if r.status is RequestStatus.WAITING)

    @property
    def num_swapped(self) -> int:
        return sum(1 for r in self.waiting if r.status is RequestStatus.SWAPPED)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Move a request to a finished status and release everything it holds."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status in QUEUED:
            self.waiting.remove(request)
            heapq.heapify(self.waiting)
        request.status = status
        self.kv.free(request)
        self.requests.pop(request.request_id, None)

    def abort(self, request_id: str) -> Optional[Request]:
        request = self.requests.get(request_id)
        if request is None:
            return None
        self.finish(request, RequestStatus.FINISHED_ABORTED)
        return request

    def preempt(self, request_id: str) -> bool:
        """Evict a running request now (for the fleet scheduler); False if not running."""
        request = self.requests.get(request_id)
        if request is None or request.status is not RequestStatus.RUNNING:
            return False
        self.running.remove(request)
        self._evict(request, self._pending_swap_out)
        self._pending_preempted.append(request)
        return True

    def reset_all_to_waiting(self) -> None:
        """Drop every request's K/V (device and host) and requeue it for recompute: the
        engine is about to release its KV memory (sleep)."""
        for request in self.running + self.waiting:
            self.kv.free(request)
            request.num_computed_tokens = 0
            request.status = RequestStatus.WAITING
        self.waiting = self.running + self.waiting
        self.running = []
        heapq.heapify(self.waiting)
        self._pending_swap_out = []

    # ---------------------------------------------------------------- the step
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(swap_out=self._pending_swap_out, preempted=self._pending_preempted)
        self._pending_swap_out, self._pending_preempted = [], []
        self._preempt_for_priority(out)
        isolate = self._isolation_class()
        if isolate is not None:
            budget, _ = self._schedule_running(out, self.max_num_batched_tokens, max_priority=isolate)
            budget = self._schedule_waiting(out, budget, only_priority=isolate)
            if out.items:  # else nothing could run after all: a normal step instead
                self.num_isolated_steps += 1
                self._isolated_run += 1
                out.num_batched_tokens = self.max_num_batched_tokens - budget
                return out
        self._isolated_run = 0
        budget, deferred = self._schedule_running(out, self.max_num_batched_tokens)
        budget = self._schedule_waiting(out, budget)
        budget = self._schedule_deferred(out, budget, deferred)
        out.num_batched_tokens = self.max_num_batched_tokens - budget
        return out

    def schedule_side_prefill(self) -> SchedulerOutput:
        """A prefill-only step to run while another step's forward pass is paused (see the
        module docstring); empty when no waiting request qualifies or none fits."""
        out = SchedulerOutput()
        priority = self._priority_head_class(self.same_class_side_prefill_max) if self.side_prefill else None
        if priority is None:
            return out
        budget = self._schedule_waiting(out, self.max_num_batched_tokens, only_priority=priority, fresh_only=True)
        if out.items:
            self.num_side_prefills += 1
            out.num_batched_tokens = self.max_num_batched_tokens - budget
        return out

    def on_step_done(self, out: SchedulerOutput) -> None:
        """Advance computed-token counts and index newly full blocks for prefix reuse."""
        kv = self.kv
        for item in out.items:
            request = item.request
            if request.status is not RequestStatus.RUNNING:
                continue  # aborted while the step ran
            request.num_computed_tokens += item.num_new_tokens
            kv.cache_full_blocks(request)

    # ---------------------------------------------------------------- phases
    def _preempt_for_priority(self, out: SchedulerOutput) -> None:
        while self.waiting and self.running:
            head = self.waiting[0]
            victim = choose_victim(self.running)
            if head.priority >= victim.priority or self._could_start(head):
                return
            self.running.remove(victim)
            self._preempt(victim, out)

    def _schedule_running(self, out: SchedulerOutput, budget: int, max_priority: Optional[int] = None) -> tuple[int, list[Request]]:
        """Returns the budget left and the prefills deferred behind a better waiting class.
        With ``max_priority``, requests of a worse class are left out of this step."""
        running = self.running
        running.sort(key=_SORT_KEY)
        head_priority = self.waiting[0].priority if self.waiting else None
        deferred: list[Request] = []
        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            if max_priority is not None and request.priority > max_priority:
                break  # sorted best first: the rest are worse too
            remaining = request.num_tokens - request.num_computed_tokens
            if remaining > 1 and head_priority is not None and head_priority < request.priority:
                # A prefill chunk of a lower class must not eat the budget a waiting
                # request of a higher class could start with; it gets what is left.
                deferred.append(request)
                i += 1
                continue
            n = min(remaining, budget)
            while not self.kv.can_allocate(request, n):
                # running is sorted best first, so its tail is the worst request not yet
                # scheduled this step (possibly ``request`` itself).
                victim = running.pop()
                self._preempt(victim, out)
                if victim is request:
                    return budget, deferred
            self.kv.allocate(request, n)
            self._emit(out, request, n)
            budget -= n
            i += 1
        return budget, deferred

    def _schedule_deferred(self, out: SchedulerOutput, budget: int, deferred: list[Request]) -> int:
        for request in deferred:
            if budget <= 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted later in this step
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self.kv.can_allocate(request, n):
                continue  # leftovers only: never preempt for a deferred chunk
            self.kv.allocate(request, n)
            self._emit(out, request, n)
            budget -= n
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int, only_priority: Optional[int] = None,
                          fresh_only: bool = False) -> int:
        """``fresh_only``: stop at a head that is swapped or was preempted (side prefills
        start new requests only: no swap-in while another step's forward pass is paused)."""
        preempted_now = {r.request_id for r in out.preempted}
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            if request.request_id in preempted_now:
                break  # just evicted: do not thrash it back in within the same step
            if only_priority is not None and request.priority != only_priority:
                break
            if fresh_only and (request.status is not RequestStatus.WAITING or request.num_preemptions):
                break
            reserve = self.watermark_blocks if self.running else 0
            if request.status is RequestStatus.SWAPPED:
                n = min(request.num_tokens - request.num_computed_tokens, budget)
                if not self.kv.can_swap_in(request, n, reserve=reserve):
                    break
                out.swap_in.extend(self.kv.swap_in(request))
                self.kv.allocate(request, n)
            else:
                hit = self.kv.find_prefix(request)
                n = min(request.num_tokens - request.num_computed_tokens - hit.num_tokens, budget)
                if not self.kv.can_allocate(request, n, hit, reserve=reserve):
                    break
                if request.num_preemptions == 0:
                    self.kv.record_prefix_lookup(request, hit)
                    request.num_cached_tokens = hit.num_tokens
                self.kv.allocate(request, n, hit)
            heapq.heappop(self.waiting)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            self._emit(out, request, n)
            budget -= n
        return budget

    # ---------------------------------------------------------------- helpers
    def _emit(self, out: SchedulerOutput, request: Request, n: int) -> None:
        start = request.num_computed_tokens
        out.items.append(ScheduledItem(request, start, n, start + n == request.num_tokens))

    def next_step_isolated(self) -> bool:
        """Whether the next ``schedule()`` will (most likely) be an isolated prefill step."""
        return self._isolation_class() is not None

    def _isolation_class(self) -> Optional[int]:
        """The class of a step of its own for the waiting head, or None for a normal step."""
        if not self.isolate_priority_prefill or self._isolated_run >= self.max_consecutive_isolated:
            return None
        return self._priority_head_class()

    def _priority_head_class(self, same_class_up_to: Optional[int] = None) -> Optional[int]:
        """The waiting head's class when it is a fresh request that could start without evicting
        anyone and is of a strictly better class than some running request or, with
        ``same_class_up_to``, of a class up to that one that no running request beats; else None."""
        if not self.waiting or not self.running:
            return None
        head = self.waiting[0]
        if head.status is not RequestStatus.WAITING or head.num_preemptions:
            return None  # a resumed request: no first token to hurry
        if max(r.priority for r in self.running) <= head.priority:  # nothing running is worse
            if same_class_up_to is None or head.priority > same_class_up_to:
                return None
            if min(r.priority for r in self.running) < head.priority:
                return None  # a better class runs
        if not self._could_start(head):
            return None
        return head.priority

    def _could_start(self, request: Request) -> bool:
        """Whether ``request`` could be admitted now without evicting anyone (estimate)."""
        if len(self.running) >= self.max_num_seqs:
            return False
        budget = max(1, self.max_num_batched_tokens - len(self.running))
        reserve = self.watermark_blocks
        if request.status is RequestStatus.SWAPPED:
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            return self.kv.can_swap_in(request, n, reserve=reserve)
        hit = self.kv.find_prefix(request)
        n = min(request.num_tokens - request.num_computed_tokens - hit.num_tokens, budget)
        return self.kv.can_allocate(request, n, hit, reserve=reserve)

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        """Evict a request already removed from ``running``."""
        self._evict(request, out.swap_out)
        out.preempted.append(request)

    def _evict(self, request: Request, swap_out: list[tuple[int, int]]) -> None:
        self.num_preemptions += 1
        request.num_preemptions += 1
        if self.preemption_mode == "swap" and self.kv.can_swap_out(request):
            swap_out.extend(self.kv.swap_out(request))
            request.status = RequestStatus.SWAPPED
        else:
            # Recompute: drop the K/V (full blocks stay in the prefix cache until evicted,
            # so the re-prefill is often cheap) and prefill prompt + output again later.
            self.kv.free(request)
            request.num_computed_tokens = 0
            request.status = RequestStatus.WAITING
        heapq.heappush(self.waiting, request)


__all__ = ["Scheduler", "SchedulerOutput", "ScheduledItem", "choose_victim", "NO_HIT"]
