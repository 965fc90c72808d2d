"""One fleet admission queue for every ingress replica (``tenants.scheduling.scope: cluster``).

With one ingress replica its :class:`FleetScheduler` already sees every request. With
several, each would count only its own requests against a replica's slots and order only
its own queue. Here the queue lives in one Ray actor per application
(:class:`FleetQueueActor`): it runs the same executor and the same pure policy, over the
requests of all ingress replicas, so slots, strict priority, the starvation guard, VTC fair
share, bounded queues and deadlines hold fleet-wide. The HTTP connection stays on the
ingress that received it; only the request's metadata crosses (one actor call to be
admitted, one to release).

Each ingress uses a :class:`ClusterFleetScheduler`, which has the ``acquire``/``release``
surface of :class:`FleetScheduler`:

- ``acquire`` awaits the actor's verdict: a slot, or a shed (429/503 with Retry-After,
  raised here as the same typed errors). A client that goes away while queued removes its
  request from the actor's queue (``abandon``).
- The actor has no replica router of its own: each ingress sends the replica stats it sees
  (its process's stats board) with its ``acquire`` calls, at most every ``push_interval_s``;
  the actor publishes them on its own board, which its pool reads exactly as the ingress's
  does (no timer: while no request arrives, it keeps the last stats; its slots are its own).
- The actor is named per application and scheduling config (a hash of the ``scheduling``
  section and the model deployments, so a redeploy with another config gets a fresh actor
  rather than the old one's settings) and created by whichever ingress replica asks first
  (``get_if_exists``). It is detached: scaling the ingress down or replacing the replica
  that created it loses no queue state. It exits by itself after
  ``queue_actor_idle_exit_s`` with no call and nothing queued or admitted, which is how a
  deleted application's or an old config's actor goes away. When it is gone anyway (its
  node lost), callers create a new one and retry once; if that fails too, this ingress
  falls back to its own local queue (logged), so a lost actor never fails requests. A new
  actor does not know the requests the old one admitted: until they finish, replicas may
  get more than ``max_inflight_per_replica`` (each engine's own queue and priority
  scheduling still hold).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

from fleetserve.clock import Clock, SystemClock
from fleetserve.errors import RateLimitError, ServiceUnavailableError
from fleetserve.admission.config import FleetSchedulingConfig
from fleetserve.admission.scheduler import FleetScheduler, SchedulerObserver, Slot
from fleetserve.admission.board_pool import board_pools, model_rows
from fleetserve.router.stats_board import ReplicaStatsBoard, from_routing_stats, process_board, to_routing_stats

log = logging.getLogger(__name__)

QUEUE_NAMESPACE = "fleetserve"
QUEUE_ACTOR_PREFIX = "fleetserve-fleet-queue:"


def queue_config_key(config: FleetSchedulingConfig, deployment_names: Mapping[str, str],
                     twins: Optional[Mapping[str, str]] = None) -> str:
    """Short hash of what the actor is built from (``twins`` only when there are some, so keys
    without them stay as they were): ingress replicas with the same config share it."""
    built = {"scheduling": config.model_dump(mode="json"), "deployments": dict(sorted(deployment_names.items()))}
    if twins:
        built["twins"] = dict(sorted(twins.items()))
    blob = json.dumps(built, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def queue_actor_name(app_name: str, config_key: str) -> str:
    return f"{QUEUE_ACTOR_PREFIX}{app_name}:{config_key}"


def idle_exit_due(now: float, last_call_at: float, queued: int, admitted: int, idle_exit_s: Optional[float]) -> bool:
    """Whether the queue actor should exit: nothing waits or runs through it, and no ingress
    has called for ``idle_exit_s`` (None: never)."""
    return idle_exit_s is not None and queued == 0 and admitted == 0 and now - last_call_at >= idle_exit_s


def _exit_this_actor() -> None:
    import ray

    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


@dataclass(frozen=True)
class SlotVerdict:
    """The actor admitted the request. ``preempted``: see :meth:`FleetQueueActor.acquire`."""

    replica_hint: Optional[str]
    queued_s: float
    preempted: Mapping[int, int]


@dataclass(frozen=True)
class ShedVerdict:
    """The actor shed the request: 429 (a class queue is full) or 503 (its deadline passed)."""

    status: int
    message: str
    retry_after_s: Optional[float]
    preempted: Mapping[int, int]


class FleetQueueActor:
    """The fleet admission queues of one application (one :class:`FleetScheduler` per model).

    Plain class; :func:`get_or_create_queue_actor` runs it as an async Ray actor. Verdicts
    are returned as tuples, not raised, so the caller rebuilds the exact typed error."""

    def __init__(self, config: dict, deployment_names: Mapping[str, str], handles: Optional[Mapping[str, Any]] = None,
                 board: Optional[ReplicaStatsBoard] = None, clock: Optional[Clock] = None,
                 exit_fn: Callable[[], None] = _exit_this_actor, twins: Optional[Mapping[str, str]] = None) -> None:
        """``twins``: model name -> its spot twin's deployment, whose replicas (pushed with the
        model's own) count as the model's capacity too."""
        self._config = FleetSchedulingConfig.model_validate(config)
        self._deployments = dict(deployment_names)
        self._board = board or process_board()
        pools = board_pools(self._deployments, handles, self._board, twins=twins)
        self._clock = clock or SystemClock()
        self._events = _PendingPreemptions()
        self._schedulers = {m: FleetScheduler(self._config.for_model(m), pools[m], self._clock, observer=self._events)
                            for m in self._deployments}
        self._known: set[str] = set()  # deployments some push has filled
        self._exit_fn = exit_fn
        self._last_call_at = self._clock.now()
        self._watch: Optional[asyncio.Task] = None

    def _touch(self) -> None:
        """Every call: note it, and make sure the idle watch runs (it needs the actor's loop)."""
        self._last_call_at = self._clock.now()
        if self._watch is None and self._config.queue_actor_idle_exit_s is not None:
            try:
                self._watch = asyncio.get_running_loop().create_task(self._watch_idle())
            except RuntimeError:  # no loop in this call's thread: the next async call starts it
                pass

    def idle_exit_due_now(self) -> bool:
        """The idle rule (:func:`idle_exit_due`) applied to this actor's queues, now."""
        queued = sum(sum(s.queue_depths().values()) for s in self._schedulers.values())
        admitted = sum(len(s.running()) for s in self._schedulers.values())
        return idle_exit_due(self._clock.now(), self._last_call_at, queued, admitted, self._config.queue_actor_idle_exit_s)

    async def _watch_idle(self) -> None:
        idle_exit_s = self._config.queue_actor_idle_exit_s
        while True:
            await asyncio.sleep(min(60.0, idle_exit_s / 4))
            if self.idle_exit_due_now():
                log.info("fleet queue actor idle for %.0f s with nothing queued or admitted: exiting", idle_exit_s)
                self._exit_fn()
                return

    def push(self, rows: Mapping[str, Mapping[str, dict]]) -> None:
        """``{deployment: {replica_id: stats}}`` as an ingress's stats board holds them. The
        latest push wins; an empty one (an ingress whose router has not seen the replicas
        yet) does not replace known rows."""
        self._touch()
        self._publish(rows)

    def _publish(self, rows: Mapping[str, Mapping[str, dict]]) -> None:
        for dep, replicas in rows.items():
            if replicas or dep not in self._known:
                self._board.publish(dep, from_routing_stats(replicas))
                self._known.add(dep)
        for s in self._schedulers.values():
            if s.queue_depths():
                s.pump()  # new capacity may let waiters through

    async def acquire(self, model: str, request_id: str, tenant_id: str, priority_class: int, weight: float,
                      prompt_tokens: int, max_tokens: int, rows: Optional[Mapping[str, Mapping[str, dict]]] = None
                      ) -> Union["SlotVerdict", "ShedVerdict"]:
        """A slot or a shed for one request.

        ``preempted`` (``{priority_class: n}``) holds the preemptions the actor made since any
        ingress last took them, so each is exported exactly once, by the ingress that gets this
        verdict (the fleet-wide counter is the sum over ingress replicas). A verdict whose
        caller was cancelled on the way back is dropped with them: the counter may then miss a
        preemption, never count one twice."""
        self._touch()
        if rows:
            self._publish(rows)
        try:
            slot = await self._schedulers[model].acquire(request_id, tenant_id, priority_class, weight, prompt_tokens, max_tokens)
        except RateLimitError as e:
            return ShedVerdict(429, str(e), e.retry_after_s, self._events.take())
        except ServiceUnavailableError as e:
            return ShedVerdict(503, str(e), e.retry_after_s, self._events.take())
        return SlotVerdict(slot.replica_hint, slot.queued_s, self._events.take())

    def release(self, model: str, request_id: str, output_tokens: int) -> None:
        self._touch()
        self._schedulers[model].release(request_id, output_tokens)

    def abandon(self, model: str, request_id: str) -> None:
        """The waiter went away before its verdict (its ingress cancelled the call)."""
        self._touch()
        self._schedulers[model].release(request_id, 0)

    def stats(self) -> dict:
        """Per model: queued requests by class, running requests, and the executor's counters."""
        out = {}
        for m, s in self._schedulers.items():
            c = s.counters
            out[m] = {"queued": s.queue_depths(), "running": len(s.running()), "dispatched": c.dispatched,
                      "shed_429": c.shed_429, "shed_503": c.shed_503, "preempted": c.preempted}
        return out


class _PendingPreemptions:
    """The actor's scheduler observer: preemptions by class, until an ingress takes them.
    Dispatches and sheds are observed by the ingress that gets the verdict."""

    def __init__(self) -> None:
        self._by_class: dict[int, int] = {}

    def dispatched(self, priority_class: int, waited_s: float) -> None:
        pass

    def shed(self, priority_class: int, status: int) -> None:
        pass

    def preempted(self, priority_class: int) -> None:
        self._by_class[priority_class] = self._by_class.get(priority_class, 0) + 1

    def take(self) -> dict[int, int]:
        out, self._by_class = self._by_class, {}
        return out


def resolve_scope(config: FleetSchedulingConfig, ingress_replicas: int) -> str:
    """``scope`` with 'auto' decided: 'cluster' when more than one ingress replica admits."""
    if config.scope != "auto":
        return config.scope
    return "cluster" if ingress_replicas > 1 else "ingress"


def cluster_scheduler_factory(app_name: str, config: FleetSchedulingConfig, deployment_names: Mapping[str, str],
                              handles: Optional[Mapping[str, Any]] = None, clock: Optional[Clock] = None,
                              twins: Optional[Mapping[str, str]] = None):
    """``TenantGatekeeper(scheduler_factory=...)`` for ``scope: cluster``: each model's queue is
    the application's shared actor, with a local :class:`FleetScheduler` as the fallback;
    ``twins`` (model -> spot twin deployment): pushed and counted with the model's own."""
    twins = dict(twins or {})
    key = queue_config_key(config, deployment_names, twins)

    def make(model: str, pool, observer) -> ClusterFleetScheduler:
        local = FleetScheduler(config.for_model(model), pool, clock, observer=observer)
        deployments = [deployment_names[model]] if model in deployment_names else list(deployment_names.values())
        deployments += [twins[model]] if model in twins else []
        return ClusterFleetScheduler(
            model, lambda: get_or_create_queue_actor(app_name, config, deployment_names, handles, key, twins), local,
            observer, deployments=deployments, push_interval_s=config.push_interval_s, clock=clock)

    return make


def get_or_create_queue_actor(app_name: str, config: FleetSchedulingConfig, deployment_names: Mapping[str, str],
                              handles: Optional[Mapping[str, Any]] = None, key: Optional[str] = None,
                              twins: Optional[Mapping[str, str]] = None):
    """The application's queue actor for this config, created here (detached) if no ingress replica has yet."""
    import ray

    # Every queued request is one pending call: allow them all (plus releases and pushes).
    concurrency = len(deployment_names) * (config.max_queue_total + 1000) + 1000
    cls = ray.remote(FleetQueueActor)
    return cls.options(
        name=queue_actor_name(app_name, key or queue_config_key(config, deployment_names, twins)), namespace=QUEUE_NAMESPACE,
        get_if_exists=True, lifetime="detached", num_cpus=0, max_concurrency=concurrency, max_restarts=0,
    ).remote(config.model_dump(mode="json"), dict(deployment_names), dict(handles or {}), twins=dict(twins or {}))


def queue_actor_names(app_name: str) -> list[str]:
    """Names of the application's queue actors (one per config it ran with and still idling)."""
    import ray

    prefix = f"{QUEUE_ACTOR_PREFIX}{app_name}:"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == QUEUE_NAMESPACE and a["name"].startswith(prefix))


def kill_queue_actors(app_name: str) -> int:
    """Remove the application's queue actors (after its deletion); returns how many."""
    import ray

    names = queue_actor_names(app_name)
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=QUEUE_NAMESPACE), no_restart=True)
        except ValueError:  # exited meanwhile
            pass
    return len(names)


class ClusterFleetScheduler:
    """The ingress's view of the shared queue: ``acquire``/``release`` like :class:`FleetScheduler`.

    ``actor_factory()`` returns the queue actor (a new one after the old died); ``local`` is
    this ingress's own scheduler, used only while the actor cannot be reached."""

    def __init__(self, model: str, actor_factory: Callable[[], Any], local: FleetScheduler,
                 observer: Optional[SchedulerObserver] = None, board: Optional[ReplicaStatsBoard] = None,
                 deployments: Optional[list[str]] = None, push_interval_s: float = 0.5,
                 clock: Optional[Clock] = None) -> None:
        self.model = model
        self.config = local.config
        self._factory = actor_factory
        self._actor = None
        self._making = asyncio.Lock()
        self._local = local
        self._observer = observer
        self._board = board or process_board()
        self._deployments = list(deployments or [])
        self._push_interval_s = push_interval_s
        self._clock = clock or SystemClock()
        self._last_push = float("-inf")
        self._local_ids: set[str] = set()  # admitted by the local fallback: released there
        self.fallbacks = 0

    async def _actor_handle(self):
        """Made (or found by name) in a thread: a blocking call must not hold the ingress's loop."""
        async with self._making:  # one lookup for the requests that arrive meanwhile
            if self._actor is None:
                self._actor = await asyncio.to_thread(self._factory)
        return self._actor

    def _rows(self, force: bool = False) -> Optional[dict]:
        now = self._clock.now()
        if not force and now - self._last_push < self._push_interval_s:
            return None
        self._last_push = now
        out = {}
        for dep, entries in model_rows(self._board, self._deployments).items():  # runtime versions' too
            if entries is not None:
                out[dep] = to_routing_stats(entries)
        return out

    async def acquire(self, request_id: str, tenant_id: str, priority_class: int, weight: float, prompt_tokens: int,
                      max_tokens: int, timeout_s: Optional[float] = None) -> Slot:
        if not self.config.enabled:
            return Slot(request_id, None, 0.0)
        verdict = None
        for attempt in range(2):
            try:
                actor = await self._actor_handle()
                ref = actor.acquire.remote(self.model, request_id, tenant_id, priority_class, weight, prompt_tokens,
                                           max_tokens, self._rows(force=attempt > 0))
            except Exception as e:  # noqa: BLE001 - no actor could be made (e.g. Ray unreachable)
                log.warning("fleet queue actor unavailable (%s); admitting on this ingress", type(e).__name__)
                break
            try:
                verdict = await ref
                break
            except asyncio.CancelledError:
                self._send("abandon", request_id)
                raise
            except Exception as e:  # noqa: BLE001 - the actor died or is unreachable: a new one, once
                log.warning("fleet queue actor failed (%s); %s", type(e).__name__,
                            "retrying on a new one" if attempt == 0 else "admitting on this ingress")
                self._actor = None
        if verdict is None:
            self.fallbacks += 1
            slot = await self._local.acquire(request_id, tenant_id, priority_class, weight, prompt_tokens, max_tokens,
                                             timeout_s)
            self._local_ids.add(request_id)
            return slot
        self._observe_preemptions(verdict.preempted)
        if isinstance(verdict, ShedVerdict):
            if self._observer is not None:
                self._observer.shed(priority_class, verdict.status)
            error = RateLimitError if verdict.status == 429 else ServiceUnavailableError
            raise error(verdict.message, retry_after_s=verdict.retry_after_s)
        if self._observer is not None:
            self._observer.dispatched(priority_class, verdict.queued_s)
        return Slot(request_id, verdict.replica_hint, verdict.queued_s)

    def _observe_preemptions(self, by_class: Mapping[int, int]) -> None:
        if self._observer is None:
            return
        for priority_class, n in by_class.items():
            for _ in range(n):
                self._observer.preempted(int(priority_class))

    def release(self, request_id: str, output_tokens: int) -> None:
        if request_id in self._local_ids:
            self._local_ids.discard(request_id)
            self._local.release(request_id, output_tokens)
            return
        self._send("release", request_id, output_tokens)

    def _send(self, method: str, *args) -> None:
        """Fire and forget (release/abandon): a lost message is a slot the actor frees when it is
        replaced. With no actor (the last call failed) there is no one to tell."""
        if self._actor is None:
            return
        try:
            getattr(self._actor, method).remote(self.model, *args)
        except Exception as e:  # noqa: BLE001
            log.warning("fleet queue %s not delivered (%s)", method, type(e).__name__)
            self._actor = None
