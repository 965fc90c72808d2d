"""The adapter called through a real Ray ``AutoscalingContext`` (no cluster needed)."""

from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

from fleetserve.autoscaler.ray_adapter import STATE_KEY, FleetserveRayPolicy, policy


def make_ctx(running=2, total=100.0, queued=20.0, target=2, state=None, now=1000.0):
    dep = DeploymentID(name="llm", app_name="app")
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=dep) for i in range(running)]
    cfg = AutoscalingConfig(
        min_replicas=1, max_replicas=8, upscale_delay_s=0, downscale_delay_s=0,
        policy=AutoscalingPolicy(policy_function="fleetserve.autoscaler.ray_adapter:policy"),
    )
    return AutoscalingContext(
        deployment_id=dep, deployment_name="llm", app_name="app",
        current_num_replicas=running, target_num_replicas=target, running_replicas=replicas,
        total_num_requests=total, total_queued_requests=queued, aggregated_metrics={}, raw_metrics={},
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state=state or {},
        last_scale_up_time=None, last_scale_down_time=None, current_time=now, config=cfg,
    )


def test_policy_function_scales_up_and_keeps_its_state():
    n, state = policy(make_ctx(total=100.0))  # default target 24 ongoing per replica
    assert n == 5
    assert STATE_KEY in state


def test_class_form_reads_a_profile_and_respects_ray_bounds():
    p = FleetserveRayPolicy(profile="autoscaler/balanced.yaml")
    n, _ = p(make_ctx(total=10_000.0))
    assert n == 8  # capped by capacity_adjusted_max_replicas
    n, _ = p(make_ctx(running=3, total=0.0, queued=0.0, target=3))
    assert n == 3  # slow scale-down: no drop on the first quiet tick


def test_ray_resolves_the_import_path():
    cfg = AutoscalingConfig(policy=AutoscalingPolicy(policy_function="fleetserve.autoscaler.ray_adapter:policy"))
    cfg.policy.serialize_policy()
    resolved = cfg.policy.get_policy()  # what Ray's controller will call
    n, _ = resolved(make_ctx(total=100.0))
    assert n == 5
