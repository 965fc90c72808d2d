"""Shared builders for admission-policy tests: each takes ``**overrides``."""

from __future__ import annotations

from fleetserve.admission.policy import AdmissionSnapshot, QueuedRequest, ReplicaCapacity, RunningRequest
from fleetserve.admission.config import FleetSchedulingConfig


def make_config(**overrides) -> FleetSchedulingConfig:
    fields = dict(max_inflight_per_replica=2, max_waiting_per_replica=4, starvation_max_wait_s=None, starvation_every_k=None,
                  class_slot_share={})  # no trunk reservation unless a test asks for it
    fields.update(overrides)
    return FleetSchedulingConfig(**fields)


def queued(rid: str, cls: int = 1, tenant: str = "t", at: float = 0.0, **overrides) -> QueuedRequest:
    fields = dict(request_id=rid, tenant_id=tenant, priority_class=cls, weight=1.0, prompt_tokens=10, max_tokens=10,
                  enqueued_at=at, deadline=at + 100.0)
    fields.update(overrides)
    return QueuedRequest(**fields)


def running(rid: str, cls: int = 2, replica: str = "r0", at: float = 0.0, **overrides) -> RunningRequest:
    fields = dict(request_id=rid, tenant_id="t", priority_class=cls, replica_id=replica, dispatched_at=at)
    fields.update(overrides)
    return RunningRequest(**fields)


def snapshot(queued=(), running=(), replicas=None, **overrides) -> AdmissionSnapshot:
    replicas = replicas if replicas is not None else (ReplicaCapacity("r0"),)
    return AdmissionSnapshot(tuple(queued), tuple(running), tuple(replicas), **overrides)
