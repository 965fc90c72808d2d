"""Warm-pool standby on a real ModelReplica (native engine, outside Ray): parking waits for the
stream in flight, releases the KV cache and leaves routing; activation wakes it and serves
the same text as before."""

from __future__ import annotations

import asyncio

import pytest

from fleetserve.deployments.standby import node_capacity_type
from fleetserve.errors import ServiceUnavailableError
from tests.deployments.test_replica import _collect, make_replica, request, wait_until


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_park_releases_kv_and_leaves_routing_then_activation_serves_again(tiny_llama_path):
    replica = await make_replica(tiny_llama_path)
    try:
        before = await _collect(replica.generate(request("a", 12)))
        rid = replica.replica_stats().replica
        assert not (await replica.set_standby(True, target_replica="another")).applied
        inflight = asyncio.create_task(_collect(replica.generate(request("b", 20))))
        await wait_until(lambda: replica.replica_stats().in_flight == 1)
        ack = await replica.set_standby(True, target_replica=rid)  # waits for "b" to finish
        assert ack.applied and ack.standby
        done = await inflight
        assert sum(len(o.token_ids_delta) for o in done) == 20  # the stream in flight was not cut
        stats = replica.replica_stats()
        assert stats.standby and not stats.accepting
        assert replica._engine.stats().sleeping  # the engine released its KV blocks tensor (LLMEngine.release_kv)
        with pytest.raises(ServiceUnavailableError):
            await replica.generate(request("c", 1)).__anext__()
        woke = await replica.set_standby(False)
        assert woke.applied and not woke.standby and woke.seconds < 5
        assert replica.replica_stats().accepting and not replica._engine.stats().sleeping
        after = await _collect(replica.generate(request("a2", 12)))
        assert [t for o in after for t in o.token_ids_delta] == [t for o in before for t in o.token_ids_delta]
    finally:
        await replica.__del__()


def test_capacity_type_from_node_label_or_resource():
    assert node_capacity_type(labels={"fleetserve/capacity": "spot"}, resources={}) == "spot"
    assert node_capacity_type(labels={}, resources={"spot": 1.0, "CPU": 2}) == "spot"
    assert node_capacity_type(labels={}, resources={"CPU": 2}) == "on_demand"
