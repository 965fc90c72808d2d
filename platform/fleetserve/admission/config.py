"""Configuration of the cluster-wide admission queue (``tenants.scheduling`` in YAML)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_INFLIGHT = 32  # slots per replica when neither the config nor the model's engine args say


class FleetSchedulingConfig(BaseModel):
    """Knobs of the fleet admission policy (see ``fleetserve.admission.policy``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Hold requests in the fleet admission queue; false sends every admitted request straight on.")
    policy: Literal["priority", "fcfs"] = Field(
        "priority",
        description="priority: strict priority between classes + VTC fair share within a class + preemption; fcfs: one queue in arrival order (for comparison).",
    )
    max_queue_per_class: int = Field(256, ge=1, description="Bound of each class's queue; a full class queue rejects new requests of that class with 429.")
    max_queue_total: int = Field(
        512, ge=1, description="Bound over all classes; when full, the newest request of the lowest non-empty class below the newcomer is shed (503)."
    )
    queue_timeout_s: dict[int, float] = Field(
        default_factory=lambda: {0: 30.0, 1: 60.0, 2: 120.0},
        description="Per class: longest wait in the fleet queue before the request is shed with 503 (classes not listed use the largest value).",
    )
    starvation_max_wait_s: Optional[float] = Field(
        10.0, gt=0, description="A lower class whose oldest request waited longer than this gets the next slot (null: off)."
    )
    starvation_every_k: Optional[int] = Field(
        16, ge=1, description="A waiting lower class gets a slot after this many dispatches of other classes (null: off)."
    )
    max_inflight_per_replica: Optional[int] = Field(
        None,
        ge=1,
        description=(
            "Requests the fleet keeps running on one replica of any model. null (default): each model's engine batch "
            "size, engine_args.max_num_seqs (the native engine's default is 64; a vLLM model that does not set it: "
            f"{DEFAULT_INFLIGHT}). More than the engine runs at once only queues in the engine, where neither trunk "
            "reservation nor fair share applies and a higher class's arrival preempts a running lower-class request "
            "instead of taking a free slot."
        ),
    )
    max_inflight_by_model: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "Per model name: requests the fleet keeps running on one of its replicas; overrides "
            "max_inflight_per_replica for that model. With max_inflight_per_replica null, models not listed get their "
            "engine batch size."
        ),
    )
    class_slot_share: dict[int, float] = Field(
        default_factory=lambda: {0: 1.0, 1: 0.9, 2: 0.75},
        description=(
            "Per class: fraction of a replica's max_inflight_per_replica that may be busy when a request of this class is "
            "dispatched (trunk reservation: the rest is kept free for higher classes, so they start at once instead of "
            "waiting for a completion or a preemption). Classes not listed: 1.0."
        ),
    )
    stream_interval_s: dict[int, float] = Field(
        default_factory=lambda: {2: 0.25},
        description=(
            "Per class: after the first streamed chunk, send at most one chunk per this many seconds (tokens in between "
            "are merged into it, none is lost). Every chunk costs CPU in the replica, the ingress and the proxy, so coarse "
            "streams for the batch class leave that CPU to higher classes under load; the first token is never delayed. "
            "Classes not listed, and every class under policy 'fcfs': the model's stream_interval_s only."
        ),
    )
    max_waiting_per_replica: int = Field(4, ge=0, description="A replica whose engine already has this many waiting requests gets no more.")
    kv_high_watermark: float = Field(0.95, gt=0, le=1.0, description="A replica with KV usage at or above this fraction gets no more requests.")
    preemption: bool = Field(True, description="Preempt running lower-class requests when a higher class waits and no replica has room.")
    preempt_via: Literal["engine", "replica_call"] = Field(
        "engine",
        description=(
            "How a waiting higher-class request displaces a lower-class one when no replica has room. 'engine': dispatch "
            "it at once to the victim's replica; that engine's priority scheduler preempts a lower-class request at its "
            "next step (no extra round trip; needs engine priority scheduling, which both backends have). 'replica_call': "
            "ask the replica to preempt the victim and dispatch when it confirms (engines without priority preemption)."
        ),
    )
    max_preempted_per_replica: int = Field(
        8, ge=0, description="Preempted (paused) requests allowed on one replica; bounds the work parked in engines."
    )
    preempt_cooldown_s: float = Field(
        0.5, gt=0, description="After asking for a preemption, wait this long for it to free a slot before asking again."
    )
    retry_after_min_s: float = Field(1.0, gt=0, description="Smallest Retry-After returned when shedding.")
    retry_after_max_s: float = Field(60.0, gt=0, description="Largest Retry-After returned when shedding.")
    tick_s: float = Field(0.05, gt=0, description="How often waiters re-run the policy (deadlines, replica stats changes).")
    scope: Literal["auto", "ingress", "cluster"] = Field(
        "auto",
        description=(
            "Where the queue lives. 'ingress': in each ingress replica (one ingress replica: already the whole fleet's "
            "queue, with no extra hop). 'cluster': one queue actor per application shared by every ingress replica "
            "(admission/cluster_queue.py): slots, priorities, fair share and bounds hold across them, at the cost of one "
            "actor call per request to be admitted and one to release. 'auto': 'cluster' when server.ingress_replicas "
            "> 1, else 'ingress'."
        ),
    )
    push_interval_s: float = Field(
        0.5, gt=0, description="scope 'cluster': an ingress sends the replica stats it sees to the queue actor with its admission calls, at most this often."
    )
    queue_actor_idle_exit_s: Optional[float] = Field(
        600.0, gt=0,
        description=(
            "scope 'cluster': the queue actor is detached (it outlives the ingress replica that created it, so scaling "
            "the ingress down or replacing that replica loses no queue state) and exits by itself after this long with "
            "no call from any ingress and nothing queued or admitted (an application deleted or redeployed with another "
            "config leaves no actor behind). None: it stays until the Ray cluster ends."
        ),
    )

    @property
    def inflight(self) -> int:
        """Requests the fleet keeps running on one replica, as the policy uses it: the
        configured value, else the smallest per-model one (one pool for every model), else
        ``DEFAULT_INFLIGHT``. A model's own queue gets a copy resolved by :meth:`for_model`."""
        if self.max_inflight_per_replica is not None:
            return self.max_inflight_per_replica
        return min(self.max_inflight_by_model.values(), default=DEFAULT_INFLIGHT)

    def inflight_for(self, model: Optional[str]) -> int:
        if model is not None and model in self.max_inflight_by_model:
            return self.max_inflight_by_model[model]
        return self.inflight

    def for_model(self, model: Optional[str]) -> "FleetSchedulingConfig":
        """This config with ``max_inflight_per_replica`` resolved for ``model``'s queue (None:
        one queue for every model)."""
        n = self.inflight_for(model)
        return self if n == self.max_inflight_per_replica else self.model_copy(update={"max_inflight_per_replica": n})

    def with_engine_batch_sizes(self, sizes: dict[str, Optional[int]]) -> "FleetSchedulingConfig":
        """With ``max_inflight_per_replica`` unset: each model of ``sizes`` (model -> its engine's
        max_num_seqs, None when unknown) not in ``max_inflight_by_model`` gets its batch size
        (``DEFAULT_INFLIGHT`` when unknown)."""
        if self.max_inflight_per_replica is not None:
            return self
        by_model = {m: (n or DEFAULT_INFLIGHT) for m, n in sizes.items()} | self.max_inflight_by_model
        return self.model_copy(update={"max_inflight_by_model": by_model})

    def slot_cap(self, priority_class: int) -> int:
        """Busy slots on a replica above which a request of this class is not dispatched there."""
        share = self.class_slot_share.get(priority_class, 1.0) if self.policy == "priority" else 1.0
        return max(1, int(share * self.inflight))

    def stream_interval_for(self, priority_class: int) -> float:
        if self.policy != "priority":
            return 0.0
        return self.stream_interval_s.get(priority_class, 0.0)

    @field_validator("max_inflight_by_model")
    @classmethod
    def _check_inflight(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"max_inflight_by_model[{k!r}] must be a positive integer, got {n!r}")
        return v

    @field_validator("stream_interval_s")
    @classmethod
    def _check_intervals(cls, v: dict[int, float]) -> dict[int, float]:
        for k, x in v.items():
            if not 0.0 <= x <= 10.0:
                raise ValueError(f"stream_interval_s[{k}] must be within [0, 10] seconds, got {x}")
        return v

    def timeout_for(self, priority_class: int) -> float:
        if priority_class in self.queue_timeout_s:
            return self.queue_timeout_s[priority_class]
        return max(self.queue_timeout_s.values(), default=60.0)
