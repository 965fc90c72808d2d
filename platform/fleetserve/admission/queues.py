"""The "admission" stage: one fleet admission queue per model, behind one small surface.

Models have separate replicas, hence separate capacity, so each gets its own executor
(:class:`fleetserve.admission.scheduler.FleetScheduler`, or the shared queue actor's client
for ``scope: cluster``, :mod:`fleetserve.admission.cluster_queue`). ``pool`` is one
:class:`ReplicaPool` for every model, or a mapping model -> pool; a model without a pool,
or scheduling switched off, is admitted at once (``admit`` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

from fleetserve.admission.config import FleetSchedulingConfig
from fleetserve.admission.scheduler import FleetScheduler, ReplicaPool, SchedulerObserver, Slot
from fleetserve.clock import Clock, SystemClock

# model, pool, observer -> an executor with FleetScheduler's acquire/release surface
SchedulerFactory = Callable[[str, ReplicaPool, Optional[SchedulerObserver]], object]


@dataclass(frozen=True)
class AdmissionRequest:
    """What the admission queue needs to know of one API request."""

    model: str
    request_id: str
    tenant_id: str
    priority: int  # the tenant's class (engine convention: lower runs first)
    weight: float  # the tenant's fair-share weight within its class
    prompt_tokens: int
    max_tokens: int  # for every choice of the request together


@dataclass(frozen=True)
class Admitted:
    """A slot held in one model's queue; hand it back to :meth:`AdmissionQueues.release`."""

    model: str
    slot: Slot


class AdmissionQueues:
    def __init__(self, config: FleetSchedulingConfig, pool: Union[ReplicaPool, Mapping[str, ReplicaPool], None],
                 clock: Optional[Clock] = None, observer_for: Optional[Callable[[str], SchedulerObserver]] = None,
                 scheduler_factory: Optional[SchedulerFactory] = None) -> None:
        """``observer_for(model)``: metrics for that model's queue ("*" when one pool serves
        every model); ``scheduler_factory``: builds a model's executor (default: a
        :class:`FleetScheduler` in this process)."""
        self.config = config
        self._pool = pool
        self._clock = clock or SystemClock()
        self._observer_for = observer_for
        self._factory = scheduler_factory
        self._schedulers: dict[str, FleetScheduler] = {}

    def scheduler_for(self, model: str) -> Optional[FleetScheduler]:
        """The fleet admission queue of ``model``; None when scheduling is off or no pool is known."""
        if self._pool is None or not self.config.enabled:
            return None
        pool = self._pool.get(model) if isinstance(self._pool, Mapping) else self._pool
        if pool is None:
            return None
        key = model if isinstance(self._pool, Mapping) else ""
        if key not in self._schedulers:
            observer = self._observer_for(key or "*") if self._observer_for is not None else None
            if self._factory is not None:
                self._schedulers[key] = self._factory(model, pool, observer)
            else:
                self._schedulers[key] = FleetScheduler(self.config.for_model(key or None), pool, self._clock, observer)
        return self._schedulers[key]

    async def admit(self, request: AdmissionRequest) -> Optional[Admitted]:
        """Wait for a slot. Raises RateLimitError / ServiceUnavailableError when shed; None
        when this model is not scheduled."""
        scheduler = self.scheduler_for(request.model)
        if scheduler is None:
            return None
        slot = await scheduler.acquire(request.request_id, request.tenant_id, request.priority, request.weight,
                                       request.prompt_tokens, request.max_tokens)
        return Admitted(request.model, slot)

    def release(self, admitted: Admitted, output_tokens: int) -> None:
        scheduler = self.scheduler_for(admitted.model)
        if scheduler is not None:
            scheduler.release(admitted.slot.request_id, output_tokens)
