"""The Serve actuator without Ray: what it reads off the replica stats board, the counts it
writes for the policy hook, and which replica its pinned calls name."""

from __future__ import annotations

import time

from fleetserve.application.serve_fleet import DeploymentRef, ServeFleetActuator
from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.config import PlacementConfig
from fleetserve.autoscaler.snapshot import CapacityType, ReplicaState
from fleetserve.deployments.replica_stats import ReplicaStats
from fleetserve.router.stats_board import ReplicaStatsBoard

FLEET = FleetId("m", "v1")
OD, SPOT = DeploymentRef("app", "model-m"), DeploymentRef("app--m--spot", "model-m--spot")


class Counts:
    def __init__(self):
        self.values = {}

    def get(self, ref):
        return self.values.get(ref)

    def put(self, ref, count):
        self.values[ref] = count


class Method:
    def __init__(self, log, name):
        self.log, self.name = log, name

    async def remote(self, *args, **kwargs):
        self.log.append((self.name, args, kwargs))


class Handle:
    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        return Method(self.log, name)


def make():
    board, counts, log = ReplicaStatsBoard(), Counts(), []
    now = time.time()
    board.publish("model-m", {
        "a": ReplicaStats("a", num_waiting=2, in_flight=5, ts=now, node_id="n1"),
        "b": ReplicaStats("b", standby=True, ts=now, node_id="n1"),
        "c": ReplicaStats("c"),  # not reported yet
    })
    board.publish("model-m--spot", {"d": ReplicaStats("d", draining=True, in_flight=1, ts=now, node_id="n2")})
    act = ServeFleetActuator({FLEET.key: {CapacityType.ON_DEMAND: OD, CapacityType.SPOT: SPOT}}, PlacementConfig(),
                             board=board, counts=counts, spot_available=lambda: False, handle_for=lambda ref: Handle(log))
    return act, counts, log


async def test_observe_maps_stats_to_states_and_capacity_and_skips_unreported_replicas():
    act, _, _ = make()
    obs = await act.observe(FLEET)
    got = {(r.replica_id, r.state, r.capacity_type, r.running) for r in obs.replicas}
    assert got == {("a", ReplicaState.ACTIVE, CapacityType.ON_DEMAND, 5),
                   ("b", ReplicaState.WARM_STANDBY, CapacityType.ON_DEMAND, 0),
                   ("d", ReplicaState.DRAINING, CapacityType.SPOT, 1)}
    assert obs.queued == 2 and obs.spot.available is False


async def test_counts_follow_start_and_stop_per_capacity_deployment():
    act, counts, _ = make()
    await act.observe(FLEET)
    await act.start(FLEET, CapacityType.SPOT, 2)
    assert counts.values[SPOT] == 3  # one seen + two asked for
    await act.stop(FLEET, "d")
    assert counts.values[SPOT] == 2
    await act.start(FLEET, CapacityType.ON_DEMAND, 1)
    # Two reported rows + one: "c" (on the board, not reported yet) is not counted, since the
    # policy does not see it either (counting it started one replica twice at deploy time).
    assert counts.values[OD] == 3


async def test_role_calls_are_pinned_to_the_named_replica():
    act, _, log = make()
    await act.observe(FLEET)
    await act.activate(FLEET, "b")
    await act.park(FLEET, "a")
    await act.drain(FLEET, "d")
    await act.drain(FLEET, "a", migrate=True)
    assert log == [("set_standby", (False,), {"target_replica": "b"}), ("set_standby", (True,), {"target_replica": "a"}),
                   ("set_draining", (True,), {"mode": None, "target_replica": "d"}),
                   ("set_draining", (True,), {"mode": "migrate", "target_replica": "a"})]


def test_placement_resources_per_capacity_type():
    p = PlacementConfig(on_demand_resource="on_demand", resource_amount=0.01)
    assert p.ray_resources(CapacityType.SPOT) == {"spot": 0.01}
    assert p.ray_resources(CapacityType.ON_DEMAND) == {"on_demand": 0.01}
    assert PlacementConfig().ray_resources(CapacityType.ON_DEMAND) == {}


def test_controller_options_place_and_hand_the_count_to_the_hook():
    from fleetserve.application.build import controller_options, model_options
    from fleetserve.config import parse_config

    cfg = parse_config({"models": [{"name": "m", "checkpoint": "/x", "replicas": {"num": 2, "min": 1, "max": 3}}]})
    m = cfg.models[0]
    opts = controller_options(model_options(m, cfg), m, PlacementConfig(), CapacityType.SPOT, "model-m--spot", initial=0)
    assert opts["name"] == "model-m--spot" and "num_replicas" not in opts
    assert opts["ray_actor_options"]["resources"] == {"spot": 0.001}
    a = opts["autoscaling_config"]
    assert a.initial_replicas == 0 and a.min_replicas == 0 and a.max_replicas == 12
    assert a.policy.policy_function == "fleetserve.autoscaler.ray_adapter:controller_target"


def test_policy_hook_returns_the_controllers_count_or_keeps_serves(monkeypatch):
    import ray.experimental.internal_kv as kv

    from fleetserve.autoscaler.ray_adapter import controller_target

    store = {b"app/model-m": b"5"}
    monkeypatch.setattr(kv, "_internal_kv_get", lambda key, namespace=None: store.get(key))

    class Ctx:
        app_name, deployment_name, target_num_replicas, policy_state = "app", "model-m", 2, {"k": 1}

    assert controller_target(Ctx()) == (5, {"k": 1})
    Ctx.deployment_name = "other"
    assert controller_target(Ctx()) == (2, {"k": 1})


def test_spot_twin_lives_in_the_main_app_and_the_ingress_stays_on_demand():
    from fleetserve.application.build import on_demand_resources, spot_twin_models
    from fleetserve.application.scaling_controller import fleet_deployments
    from fleetserve.config import parse_config

    models = [{"name": "m", "checkpoint": "/x"}, {"name": "n", "checkpoint": "/y"}]
    auto = {"controller": True, "placement": {"on_demand_resource": "on_demand"},
            "models": {"m": {"spot": {"enabled": True}}}}
    cfg = parse_config({"server": {"app_name": "app"}, "models": models, "autoscaler": auto})
    assert [m.name for m in spot_twin_models(cfg)] == ["m"]
    refs = fleet_deployments(cfg)
    assert refs["m@v1"] == {CapacityType.ON_DEMAND: DeploymentRef("app", "model-m"),
                            CapacityType.SPOT: DeploymentRef("app", "model-m--spot")}
    assert refs["n@v1"] == {CapacityType.ON_DEMAND: DeploymentRef("app", "model-n")}
    assert on_demand_resources(cfg) == {"on_demand": 0.001}
    from fleetserve.application.build import controller_options, model_options, twin_deployment_name

    m = cfg.models[0]
    od = model_options(m, cfg)  # the on-demand deployment's options, placement included
    assert od["ray_actor_options"]["resources"] == {"on_demand": 0.001}
    twin = controller_options(od, m, cfg.autoscaler.placement, CapacityType.SPOT, twin_deployment_name(m), initial=0)
    assert twin["ray_actor_options"]["resources"] == {"spot": 0.001}  # spot only: never both
    plain = parse_config({"models": models, "autoscaler": {**auto, "controller": False}})
    assert spot_twin_models(plain) == [] and on_demand_resources(plain) == {}


async def test_only_a_fleet_with_a_spot_twin_reads_rays_node_table():
    asked = []

    def spot_available():  # stands in for spot_nodes_alive: blocking reads of Ray's GCS
        asked.append(1)
        return True

    fleets = {FLEET.key: {CapacityType.ON_DEMAND: OD}, "n@v1": {CapacityType.ON_DEMAND: OD, CapacityType.SPOT: SPOT}}
    act = ServeFleetActuator(fleets, PlacementConfig(), board=ReplicaStatsBoard(), counts=Counts(),
                             spot_available=spot_available, handle_for=lambda ref: Handle([]))
    assert (await act.observe(FLEET)).spot.available is False and asked == []
    assert (await act.observe(FleetId("n", "v1"))).spot.available is True and asked == [1]
