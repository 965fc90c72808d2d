"""Spot / on-demand placement on a real two-node Ray cluster (``ray.cluster_utils.Cluster``):
the head plays on-demand (resource ``on_demand``), the worker spot (resource ``spot``). The
real scaling controller drives the real Serve actuator: its decision to burst onto spot puts
a replica on the spot node, the on-demand base stays on the head, and a warm-pool refill is
parked as a standby (engine asleep, out of routing).

Needs its own Ray cluster, so it skips when this process already joined another one (run
this file on its own: ``flock /tmp/fleetserve-ray.lock pytest -m ray tests/application/test_spot_placement.py``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fixtures.ray_serve import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_node_cluster():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("needs its own two-node Ray cluster; this process already joined one (run the file alone)")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"on_demand": 100}})
    spot = cluster.add_node(num_cpus=2, resources={"spot": 100})
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster, spot
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


def deploy(checkpoint: str):
    from ray import serve

    from fleetserve.application.build import controller_options, model_options
    from fleetserve.autoscaler.config import AutoscalerConfig, PlacementConfig
    from fleetserve.autoscaler.snapshot import CapacityType
    from fleetserve.config import parse_config
    from fleetserve.deployments.replica import ModelReplica

    cfg = parse_config({"server": {"app_name": "place"}, "models": [{
        "name": "tiny", "checkpoint": checkpoint, "resources": {"num_cpus": 0.25}, "drain_timeout_s": 5,
        "engine_args": {"num_kv_blocks": 64, "num_threads": 1, "engine_process": False}}]})
    placement = PlacementConfig(on_demand_resource="on_demand")
    m = cfg.models[0]
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    for app, ctype, name in (("place-od", CapacityType.ON_DEMAND, "model-tiny"),
                             ("place-spot", CapacityType.SPOT, "model-tiny--spot")):
        opts = controller_options(model_options(m, cfg), m, placement, ctype, name,
                                  initial=0 if ctype is CapacityType.SPOT else 1)
        serve.run(serve.deployment(ModelReplica).options(**opts).bind(m.model_dump(mode="json")),
                  name=app, route_prefix=None, blocking=False)
    return AutoscalerConfig(placement=placement, controller=True, defaults={
        "scaling": {"min_replicas": 1, "max_replicas": 4, "downscale_delay_s": 600},
        "spot": {"enabled": True, "on_demand_base": 1, "max_spot_share": 0.5}})


async def tick_until(ctrl, pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await ctrl.tick()
        if pred():
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}; status: {ctrl.status()}")


def test_spot_burst_lands_on_the_spot_node_and_a_refill_is_parked(two_node_cluster, tiny_llama_path):
    cluster, spot_node = two_node_cluster
    from fleetserve.application.serve_fleet import DeploymentRef, ServeFleetActuator
    from fleetserve.autoscaler.actuator import FleetId
    from fleetserve.autoscaler.controller import ScalingController
    from fleetserve.autoscaler.controller_state import ScaleOverride
    from fleetserve.autoscaler.snapshot import CapacityType
    from fleetserve.canary.store import MemoryCanaryStore
    from fleetserve.clock import SystemClock

    cfg = deploy(str(tiny_llama_path))
    fleet = FleetId("tiny", "v1")
    actuator = ServeFleetActuator({fleet.key: {CapacityType.ON_DEMAND: DeploymentRef("place-od", "model-tiny"),
                                               CapacityType.SPOT: DeploymentRef("place-spot", "model-tiny--spot")}},
                                  cfg.placement)
    ctrl = ScalingController(cfg, [fleet], actuator, SystemClock(), MemoryCanaryStore())
    spot_id = spot_node.node_id

    async def scenario():
        await tick_until(ctrl, lambda: len(ctrl.status()[fleet.key]["serving"]) == 1, 180, "the on-demand base")
        await ctrl.set_override(fleet, ScaleOverride(min_replicas=2))
        await tick_until(ctrl, lambda: len(ctrl.status()[fleet.key]["serving"]) == 2, 240, "a spot replica")
        seen = await actuator.observe(fleet)
        placed = {(r.capacity_type, r.node_id == spot_id) for r in seen.replicas}
        assert placed == {(CapacityType.ON_DEMAND, False), (CapacityType.SPOT, True)}, seen
        await ctrl.set_override(fleet, ScaleOverride(min_replicas=2, warm=1))
        await tick_until(ctrl, lambda: len(ctrl.status()[fleet.key]["standby"]) == 1, 240, "a parked refill")
        (sid,) = ctrl.status()[fleet.key]["standby"]

        async def parked() -> bool:
            return any(r.replica_id == sid and r.state.value == "warm_standby" for r in (await actuator.observe(fleet)).replicas)

        deadline = time.monotonic() + 60
        while not await parked():
            assert time.monotonic() < deadline, "the standby's stats never said standby"
            await asyncio.sleep(0.5)
        standby_row = next(r for r in (await actuator.observe(fleet)).replicas if r.replica_id == sid)
        assert standby_row.capacity_type is CapacityType.ON_DEMAND and standby_row.node_id != spot_id

    asyncio.run(scenario())
