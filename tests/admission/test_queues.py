"""The quota and admission stages together (tenants' gatekeeper + the fleet admission queues,
run by InferenceService's stage methods): priority across tenants, shedding releases the quota."""

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.admission.metrics import admission_metrics
from fleetserve.admission.queues import AdmissionQueues
from fleetserve.api.request_metrics import ChoiceTiming
from fleetserve.api.service import InferenceService, ModelSpec, ServedModel
from fleetserve.engine.protocol import ModelInfo
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import RateLimitError
from fleetserve.admission.policy import ReplicaCapacity
from fleetserve.admission.config import FleetSchedulingConfig
from fleetserve.admission.board_pool import UNKNOWN_REPLICA, BoardReplicaPool, board_pools
from fleetserve.router.stats_board import ReplicaStatsBoard, from_routing_stats
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.api.test_chunk_format import make_job
from tests.tenants.factories import make_config, make_spec


class OneSlotPool:
    def capacity_snapshot(self):
        return [ReplicaCapacity("r0")]

    async def preempt(self, replica_id, request_id):
        return False


class Stages:
    """Stages 2, 4 and 7 of the request path on a real gatekeeper and real admission queues."""

    def __init__(self, gk: TenantGatekeeper, queues: AdmissionQueues):
        self.gk, self.queues = gk, queues
        self.service = InferenceService([ModelSpec("tiny", "/x")], client=None, gatekeeper=gk, admission=queues)

    async def authenticate(self, key):
        return await self.gk.authenticate(key)

    async def admit(self, ctx, model, request_id, prompt_tokens, max_tokens):
        info = ModelInfo(name=model, max_model_len=64, vocab_size=100, eos_token_ids=[0])
        job = make_job(request_id=request_id, ctx=ctx, prompts=[[1] * prompt_tokens], n=1,
                       params=SamplingParams(max_tokens=max_tokens), model=ServedModel(ModelSpec(model, "/x"), info, None, 0))
        ticket = await self.service.reserve_quota(job)
        return job, ticket, await self.service.admit(job, ticket)

    async def complete(self, admitted, prompt_tokens, completion_tokens, outcome):
        job, ticket, slot = admitted
        timing = ChoiceTiming(1)
        timing.on_tokens(0, completion_tokens, 0.0)
        await self.service.account(job, ticket, slot, timing, outcome, "200")

    def scheduler_for(self, model):
        return self.queues.scheduler_for(model)


def gatekeeper(registry=None, **sched):
    cfg = make_config(
        make_spec(id="prem", key="fs-prem", tier="premium"),
        make_spec(id="bulk", key="fs-bulk", tier="batch", quotas={"max_concurrent": 3}),
        scheduling=FleetSchedulingConfig(max_inflight_per_replica=1, tick_s=0.01, starvation_every_k=None,
                                         starvation_max_wait_s=None, **sched),
    )
    registry = registry or CollectorRegistry()
    gk = TenantGatekeeper(cfg, metrics_registry=registry)
    return Stages(gk, AdmissionQueues(cfg.scheduling, {"tiny": OneSlotPool()},
                                      observer_for=admission_metrics(registry).observer))


async def test_premium_overtakes_queued_batch_and_shed_requests_free_their_quota():
    gk = gatekeeper(max_queue_per_class=1, preemption=False)  # queue order only: nobody displaces b0
    bulk, prem = await gk.authenticate("fs-bulk"), await gk.authenticate("fs-prem")
    running = await gk.admit(bulk, "tiny", "b0", 5, 5)  # holds the only slot
    queued_bulk = asyncio.create_task(gk.admit(bulk, "tiny", "b1", 5, 5))
    queued_prem = asyncio.create_task(gk.admit(prem, "tiny", "p1", 5, 5))
    sched = gk.scheduler_for("tiny")
    deadline = asyncio.get_running_loop().time() + 10
    while sched.queue_depths() != {0: 1, 2: 1}:
        assert asyncio.get_running_loop().time() < deadline, f"queues never reached the expected depths: {sched.queue_depths()}"
        await asyncio.sleep(0.005)
    with pytest.raises(RateLimitError):  # batch class queue is full (bound 1)
        await gk.admit(bulk, "tiny", "b2", 5, 5)
    await gk.complete(running, 5, 5, "ok")
    p = await asyncio.wait_for(queued_prem, 2)  # premium first although it arrived later
    assert not queued_bulk.done()
    await gk.complete(p, 5, 5, "ok")
    b = await asyncio.wait_for(queued_bulk, 2)
    await gk.complete(b, 5, 5, "ok")
    # The shed request released its concurrency slot: 3 more batch requests fit the quota of 3.
    leases = [await gk.gk.quotas.acquire("bulk", gk.gk.registry.get("bulk").quotas, f"x{i}", 1) for i in range(3)]
    assert len(leases) == 3
    usage = await gk.gk.usage("fs-admin-test", "bulk")
    assert usage["bulk"]["tiny"]["rejected"] == 1 and usage["bulk"]["tiny"]["requests"] == 2


async def test_unknown_model_pool_means_no_queue():
    gk = gatekeeper()
    assert gk.scheduler_for("other") is None and gk.scheduler_for("tiny") is gk.scheduler_for("tiny")


async def test_board_pool_reads_published_stats():
    board = ReplicaStatsBoard()
    pool = board_pools({"tiny": "TinyDeployment"}, board=board)["tiny"]
    assert [r.replica_id for r in pool.capacity_snapshot()] == [UNKNOWN_REPLICA]
    board.publish("TinyDeployment", from_routing_stats({"a": {"num_running": 3, "num_waiting": 1, "kv_usage": 0.5, "draining": True}, "b": {}}))
    caps = {r.replica_id: r for r in pool.capacity_snapshot()}
    assert caps["a"] == ReplicaCapacity("a", 3, 1, 0.5, True, accepting=False) and caps["b"] == ReplicaCapacity("b")
    assert await BoardReplicaPool("x", board).preempt("a", "r") is False


class FakeReplicaHandle:
    """Stands in for a DeploymentHandle of ModelReplica: replica 'b' holds job 'j1'."""

    def __init__(self):
        self.calls = []
        handle = self

        class _Method:
            async def remote(self, job_id, target_replica=None):
                handle.calls.append((job_id, target_replica))
                return target_replica == "b" and job_id == "j1"

        self.preempt_job = _Method()


async def test_handle_preempt_tries_the_hint_first_then_every_replica():
    board = ReplicaStatsBoard()
    board.publish("D", from_routing_stats({"a": {}, "b": {}, "c": {}}))
    handle = FakeReplicaHandle()
    pool = board_pools({"tiny": "D"}, {"tiny": handle}, board)["tiny"]
    assert await pool.preempt("c", "j1") is True
    assert handle.calls == [("j1", "c"), ("j1", "a"), ("j1", "b")]
    handle.calls.clear()
    assert await pool.preempt("b", "j2") is False and len(handle.calls) == 3


async def test_fleet_metrics_are_exported():
    reg = CollectorRegistry()
    gk = gatekeeper(registry=reg)
    ctx = await gk.authenticate("fs-prem")
    await gk.complete(await gk.admit(ctx, "tiny", "a", 1, 1), 1, 1, "ok")
    assert reg.get_sample_value("fleetserve_fleet_queue_wait_seconds_count", {"model": "tiny", "priority_class": "0"}) == 1


async def test_stream_interval_follows_the_tier_and_is_off_under_fcfs():
    gk = gatekeeper()
    assert (await gk.authenticate("fs-bulk")).stream_interval_s == 0.25  # batch class: coarse chunks
    assert (await gk.authenticate("fs-prem")).stream_interval_s == 0.0  # premium: every token
    fcfs = gatekeeper(policy="fcfs")
    assert (await fcfs.authenticate("fs-bulk")).stream_interval_s == 0.0
    with pytest.raises(ValueError, match=r"stream_interval_s\[2\]"):
        FleetSchedulingConfig(stream_interval_s={2: -1.0})
