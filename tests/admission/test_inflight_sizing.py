"""The fleet's slots per replica follow each model's engine batch size unless configured.

The soak of session 18 found the cost of a mismatch: 32 fleet slots on an engine of 16 kept
up to 16 requests queued inside the engine, where a premium arrival preempts a running batch
request (88 engine preemptions in 10 s) instead of taking a free slot, and the batch tier's
TTFT p99 reached 3.5 s in a minute that had 0.68 s with matched slots at the same load.
"""

import pytest

from fleetserve.admission.config import DEFAULT_INFLIGHT, FleetSchedulingConfig
from fleetserve.admission.policy import AdmissionSnapshot, ReplicaCapacity, RunningRequest, free_slots
from fleetserve.admission.queues import AdmissionQueues
from fleetserve.application.build import ingress_max_ongoing
from fleetserve.application.wiring import tenants_config
from fleetserve.config import parse_config


def fleet(models, scheduling=None):
    return parse_config({"models": models, "tenants": {"scheduling": scheduling or {}}})


def test_each_model_gets_its_engine_batch_size():
    cfg = fleet([{"name": "small", "checkpoint": "/x", "engine_args": {"max_num_seqs": 16}},
                 {"name": "default", "checkpoint": "/y"},
                 {"name": "v", "checkpoint": "/z", "engine": "vllm"},
                 {"name": "v8", "checkpoint": "/z", "engine": "vllm", "engine_args": {"max_num_seqs": 8}}])
    sched = tenants_config(cfg).scheduling
    assert sched.max_inflight_per_replica is None
    assert {m: sched.inflight_for(m) for m in ("small", "default", "v", "v8")} == {
        "small": 16, "default": 64, "v": DEFAULT_INFLIGHT, "v8": 8}
    assert sched.for_model("small").max_inflight_per_replica == 16
    assert sched.for_model(None).inflight == 8  # one pool for every model: the smallest


def test_an_explicit_value_wins_and_a_per_model_one_wins_over_it():
    models = [{"name": "a", "checkpoint": "/x", "engine_args": {"max_num_seqs": 16}},
              {"name": "b", "checkpoint": "/y", "engine_args": {"max_num_seqs": 16}}]
    sched = tenants_config(fleet(models, {"max_inflight_per_replica": 32, "max_inflight_by_model": {"b": 4}})).scheduling
    assert sched.inflight_for("a") == 32 and sched.inflight_for("b") == 4
    sched = tenants_config(fleet(models, {"max_inflight_by_model": {"b": 4}})).scheduling
    assert sched.inflight_for("a") == 16 and sched.inflight_for("b") == 4


def test_a_bad_per_model_value_is_a_config_error():
    from fleetserve.errors import ConfigError

    with pytest.raises((ConfigError, ValueError)):
        fleet([{"name": "a", "checkpoint": "/x"}], {"max_inflight_by_model": {"a": 0}})


def test_the_policy_stops_dispatching_at_the_resolved_size():
    cfg = FleetSchedulingConfig().with_engine_batch_sizes({"m": 16}).for_model("m")
    busy = tuple(RunningRequest(f"r{i}", "t", 2, "rep", 0.0) for i in range(16))
    snap = AdmissionSnapshot(queued=(), running=busy, replicas=(ReplicaCapacity("rep", num_running=16),))
    assert free_slots(snap, cfg) == {"rep": 0}
    assert free_slots(AdmissionSnapshot((), busy[:12], snap.replicas), cfg) == {"rep": 4}
    assert cfg.slot_cap(2) == 12  # batch's trunk reservation: 0.75 of the engine's 16


def test_each_models_queue_runs_with_its_own_size():
    class Pool:
        def capacity_snapshot(self):
            return [ReplicaCapacity("r0")]

        async def preempt(self, replica_id, request_id):
            return False

    sched = FleetSchedulingConfig().with_engine_batch_sizes({"a": 16, "b": 64})
    queues = AdmissionQueues(sched, {"a": Pool(), "b": Pool()})
    assert queues.scheduler_for("a").config.inflight == 16
    assert queues.scheduler_for("b").config.inflight == 64


def test_the_ingress_cap_counts_the_resolved_slots():
    one = fleet([{"name": "a", "checkpoint": "/x", "engine_args": {"max_num_seqs": 512}, "replicas": {"num": 1, "max": 4}}],
                {"max_queue_total": 4096, "max_queue_per_class": 2048})
    assert ingress_max_ongoing(one) > 4096 + 4 * 512
