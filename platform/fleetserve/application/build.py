"""Build and run the Ray Serve application described by a :class:`FleetConfig`.

One application: an ``ingress`` deployment (REST + gRPC) bound to one ``ModelReplica``
deployment per model. Works against an embedded cluster (``fleetserve serve``) or a
running one (``ray.init(address=...)`` first, or ``fleetserve serve --address ray://...``).
"""

from __future__ import annotations

import re
from typing import Optional

from fleetserve.config import FleetConfig, ModelConfig

GRPC_SERVICER_FUNCTION = "fleetserve.api.grpc.registration:add_servicer"
INGRESS_DEPLOYMENT = "ingress"
# Concurrent requests per ingress replica, at least: it only relays streams, so it can hold many.
INGRESS_MAX_ONGOING = 1000


def deployment_name(model: ModelConfig) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_-]", "-", model.name)


def twin_deployment_name(model: ModelConfig) -> str:
    """The spot twin of a model's deployment: same version, replicas on spot capacity."""
    return deployment_name(model) + "--spot"


def spot_twin_models(cfg: FleetConfig) -> list[ModelConfig]:
    """Models that get a spot twin deployment: the scaling controller is on and bursts them onto spot."""
    if not controller_enabled(cfg):
        return []
    return [m for m in cfg.models if cfg.autoscaler.for_model(m.name).spot.enabled]


def model_options(m: ModelConfig, cfg: FleetConfig) -> dict:
    """Serve options of ``m``'s deployment (a configured model's, or a runtime version's)."""
    from ray.serve.config import RequestRouterConfig

    from fleetserve.router.replica_router import FleetReplicaRouter

    opts = dict(
        name=deployment_name(m),
        max_ongoing_requests=m.max_ongoing_requests,
        # Beyond this many requests queued in the ingress's handle, Serve answers 503.
        max_queued_requests=max(100, 10 * m.max_ongoing_requests * m.replicas.max_replicas),
        ray_actor_options={"num_cpus": m.resources.num_cpus, "num_gpus": m.resources.num_gpus},
        health_check_period_s=5.0,
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=m.drain_timeout_s + 5.0,
        graceful_shutdown_wait_loop_s=0.5,
        request_router_config=RequestRouterConfig(
            request_router_class=FleetReplicaRouter,
            request_router_kwargs={"even_load_slack": m.routing.even_load_slack},
            request_routing_stats_period_s=m.routing.stats_period_s,
            request_routing_stats_timeout_s=max(5.0, 2 * m.routing.stats_period_s),
        ),
    )
    if controller_enabled(cfg):
        from fleetserve.autoscaler.snapshot import CapacityType

        return controller_options(opts, m, cfg.autoscaler.placement, CapacityType.ON_DEMAND, opts["name"],
                                  initial=initial_on_demand(m, cfg))
    autoscaling = _autoscaling(m, cfg)
    if autoscaling is None:
        opts["num_replicas"] = m.replicas.num
    else:
        opts["autoscaling_config"] = autoscaling
    return opts


def controller_enabled(cfg: FleetConfig) -> bool:
    """The scaling controller sets the model deployments' counts (``autoscaler.controller``)."""
    return cfg.autoscaler is not None and bool(getattr(cfg.autoscaler, "controller", False))


def initial_on_demand(m: ModelConfig, cfg: FleetConfig) -> int:
    """The on-demand replicas the controller's policy plans for ``m`` idle (serving minimum
    plus warm pool, ``autoscaler/initial.py``): Serve starts exactly these, so the
    controller's first count changes nothing (no replica started only to be stopped)."""
    from fleetserve.autoscaler.initial import initial_replicas
    from fleetserve.autoscaler.snapshot import CapacityType

    policy = cfg.autoscaler.for_model(m.name)
    return initial_replicas(policy).get(CapacityType.ON_DEMAND, 0)


def controller_options(opts: dict, m: ModelConfig, placement, capacity_type, name: str,
                       initial: Optional[int] = None) -> dict:
    """A deployment whose replica count the scaling controller sets (``ray_adapter.controller_target``)
    on ``capacity_type`` nodes (``placement``: the autoscaler's PlacementConfig), starting
    with ``initial`` replicas (default: ``m.replicas.num``)."""
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    out = {k: v for k, v in opts.items() if k != "num_replicas"}
    actor = dict(out["ray_actor_options"])
    # Replace, not add to, a placement already there (``opts`` may be the on-demand deployment's).
    placed = {placement.spot_resource, placement.on_demand_resource}
    kept = {k: v for k, v in actor.get("resources", {}).items() if k not in placed}
    actor["resources"] = {**kept, **placement.ray_resources(capacity_type)}
    out.update(name=name, ray_actor_options=actor, autoscaling_config=AutoscalingConfig(
        min_replicas=0, max_replicas=max(1, 4 * m.replicas.max_replicas), initial_replicas=m.replicas.num if initial is None else initial,
        upscale_delay_s=0, downscale_delay_s=0,
        policy=AutoscalingPolicy(policy_function="fleetserve.autoscaler.ray_adapter:controller_target")))
    return out


def on_demand_resources(cfg: FleetConfig) -> dict:
    """What keeps an actor off spot nodes (the ingress, the controller): the on-demand resource
    when the scaling controller places replicas and ``placement.on_demand_resource`` is set."""
    if not controller_enabled(cfg):
        return {}
    from fleetserve.autoscaler.snapshot import CapacityType

    return cfg.autoscaler.placement.ray_resources(CapacityType.ON_DEMAND)


def _autoscaling(m: ModelConfig, cfg: FleetConfig):
    """Ray autoscaling driven by fleetserve's policy when an autoscaler section is set."""
    if cfg.autoscaler is None or not hasattr(cfg.autoscaler, "for_model"):
        return None
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    return AutoscalingConfig(
        min_replicas=m.replicas.min_replicas,
        max_replicas=m.replicas.max_replicas,
        initial_replicas=m.replicas.num,
        upscale_delay_s=0,
        downscale_delay_s=0,  # fleetserve's policy has its own hysteresis
        policy=AutoscalingPolicy(
            policy_function="fleetserve.autoscaler.ray_adapter:FleetserveRayPolicy",
            policy_kwargs={"config": cfg.autoscaler.for_model(m.name).model_dump(mode="json"), "model": m.name},
        ),
    )


def ingress_max_ongoing(cfg: FleetConfig) -> int:
    """Concurrent requests one ingress replica accepts (Serve's ``max_ongoing_requests``).

    Serve holds requests beyond it in arrival order, before any tenant is known: a premium
    request would wait behind the flood there (measured: premium TTFT p99 54 s once a 90 s
    flood had queued over 1000 batch requests). So the cap must exceed everything the fleet
    scheduler may hold (its queue bound plus what runs on every replica), and the fleet's
    own bounds, which shed the lowest class first, are what limit.
    """
    sched = fleet_scheduling(cfg)
    running = sum(sched.inflight_for(m.name) * m.replicas.max_replicas for m in cfg.models)
    return max(INGRESS_MAX_ONGOING, sched.max_queue_total + running + 100)


def engine_batch_size(model: ModelConfig) -> Optional[int]:
    """Requests ``model``'s engine runs at once (``max_num_seqs``); None when the engine picks
    it (vLLM without ``max_num_seqs``)."""
    if model.engine == "native":
        return model.native_engine_config().max_num_seqs
    n = model.engine_args.get("max_num_seqs")
    return n if isinstance(n, int) and n >= 1 else None


def fleet_scheduling(cfg: FleetConfig):
    """``tenants.scheduling`` with the fleet's slots per replica resolved per model from the
    engines' batch sizes (when ``max_inflight_per_replica`` is unset)."""
    return cfg.tenants.scheduling.with_engine_batch_sizes({m.name: engine_batch_size(m) for m in cfg.models})


def ingress_graceful_shutdown_s(cfg: FleetConfig) -> float:
    """How long a stopping ingress replica (scale-down, redeploy) waits for its open requests.

    Serve's default (20 s) would cut streams that the model replica, draining for its
    ``drain_timeout_s``, would still have finished; the ingress waits at least as long as the
    slowest model's replicas do."""
    return max(m.drain_timeout_s for m in cfg.models) + 5.0


def build_app(cfg: FleetConfig, engine_factory=None):
    """The bound Serve application (pass to ``serve.run``)."""
    from ray import serve

    from fleetserve.application.ingress import Ingress
    from fleetserve.application.wiring import cluster_config
    from fleetserve.application.metrics_port import listener_settings
    from fleetserve.deployments.replica import ModelReplica

    cfg = cluster_config(cfg)  # only the admin key's hash enters the bound (GCS-stored) arguments
    handles, names, twins = {}, {}, {}
    link = cfg.server.replica_transport == "direct"
    for m in cfg.models:
        dep = serve.deployment(ModelReplica).options(**model_options(m, cfg))
        handles[m.name] = dep.bind(m.model_dump(mode="json"), engine_factory, link=link, metrics=listener_settings(cfg))
        names[m.name] = deployment_name(m)
    for m in spot_twin_models(cfg):
        # In the main application (not an ingress of its own, so it keeps fleetserve's replica
        # router); the controller raises its count from 0 when it bursts onto spot.
        from fleetserve.autoscaler.snapshot import CapacityType

        opts = controller_options(model_options(m, cfg), m, cfg.autoscaler.placement, CapacityType.SPOT,
                                  twin_deployment_name(m), initial=0)
        twins[m.name] = serve.deployment(ModelReplica).options(**opts).bind(
            m.model_dump(mode="json"), engine_factory, link=link, metrics=listener_settings(cfg))
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name=INGRESS_DEPLOYMENT,
        num_replicas=cfg.server.ingress_replicas,
        max_ongoing_requests=ingress_max_ongoing(cfg),
        graceful_shutdown_timeout_s=ingress_graceful_shutdown_s(cfg),
        graceful_shutdown_wait_loop_s=0.5,
        ray_actor_options={"num_cpus": 0, "resources": on_demand_resources(cfg)},
    )
    return ingress.bind(cfg.model_dump(mode="json"), handles, names, twins)


def start_serve(cfg: FleetConfig) -> None:
    """Start Serve's HTTP (and, when configured, gRPC) proxies on the configured ports."""
    from ray import serve

    grpc_options = None
    if cfg.server.grpc_port is not None:
        grpc_options = {"port": cfg.server.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]}
    http_options = {"host": cfg.server.host, "port": cfg.server.port}
    if cfg.server.request_timeout_s is not None:
        http_options["request_timeout_s"] = cfg.server.request_timeout_s
    serve.start(http_options=http_options, grpc_options=grpc_options)


def deploy(cfg: FleetConfig, engine_factory=None, *, start: bool = True):
    """Start Serve (if asked) and deploy; returns the ingress DeploymentHandle once ready."""
    from ray import serve

    if start:
        start_serve(cfg)
    return serve.run(build_app(cfg, engine_factory), name=cfg.server.app_name,
                     route_prefix=cfg.server.route_prefix, blocking=False)


def model_handle(cfg: FleetConfig, model: str):
    """DeploymentHandle of one model's replicas (the benchmark's 'Serve handle' path)."""
    from ray import serve

    return serve.get_deployment_handle(deployment_name(cfg.model(model)), app_name=cfg.server.app_name)
