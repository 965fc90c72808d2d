"""The ingress deployment: REST (FastAPI via ``@serve.ingress``) and gRPC in one class.

Serve's HTTP proxy hands HTTP requests to the FastAPI app built in
``__serve_build_asgi_app__``; Serve's gRPC proxy calls the methods named after the RPCs
(``Generate``, ``GenerateStream``, ``ListModels``). Both drive the same
:class:`fleetserve.api.service.InferenceService`, so semantics, auth and errors match.
"""

from __future__ import annotations

from typing import Optional

from fleetserve.api.adapter_routes import build_adapter_router
from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.config import FleetConfig
from fleetserve.application.build import controller_enabled, twin_deployment_name
from fleetserve.application.versions import ServeVersionDeployer
from fleetserve.canary.admin_routes import build_version_router
from fleetserve.application.probe import ServiceProber
from fleetserve.application.wiring import (build_ab, build_adapters, build_admission, build_gatekeeper, build_rollouts,
                                           build_versions, warm_pool_rows)
from fleetserve.api.json_body import read_model
from fleetserve.canary.rollout_routes import body_models as rollout_body_models
from fleetserve.canary.rollout_routes import build_rollout_router
from fleetserve.deployments.handle_client import HandleModelClient
from fleetserve.deployments.replica_control import HandleReplicaControl
from fleetserve.engine.runtime.heap_freeze import freeze_startup_heap
from fleetserve.application.metrics_port import listener_settings
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.metrics.server import MetricsServer
from fleetserve.router.chooser import ReplicaChooser


class Ingress:
    def __init__(self, config: dict, handles: dict, deployment_names: dict[str, str], twins: Optional[dict] = None):
        """``twins``: model name -> the handle of its spot twin deployment (scaling controller
        with spot): routed to together with the model's own deployment."""
        self._cfg = FleetConfig.model_validate(config)
        specs = [
            ModelSpec(m.name, m.checkpoint, m.version, m.routing.prefix_affinity_blocks, m.routing.block_size,
                      tool_call_parser=m.tool_call_parser)
            for m in self._cfg.models
        ]
        link = None
        if self._cfg.server.replica_transport == "direct":
            from fleetserve.deployments.replica_link import ReplicaLinkClient, cluster_secret

            link = ReplicaLinkClient(cluster_secret())
        # Versions deployed at runtime are separate Serve applications, found by name on first use.
        self._deployer = ServeVersionDeployer(self._cfg)
        twin_names = {m.name: twin_deployment_name(m) for m in self._cfg.models if m.name in (twins or {})}
        by_target = {**handles, **{twin_names[m]: h for m, h in (twins or {}).items()}}
        client = HandleModelClient(by_target, link=link, resolve=self._deployer.handle_for_key)
        slack = {m.name: m.routing.even_load_slack for m in self._cfg.models}
        router = ReplicaChooser(deployment_names, client, slack=slack, resolve=self._deployer.deployment_for_key,
                                twins=twin_names)
        metrics = FleetMetrics()  # shared with the gatekeeper and the admission queues: one /metrics
        gatekeeper = build_gatekeeper(self._cfg, metrics_registry=metrics.registry)
        admission = build_admission(self._cfg, metrics.registry, deployment_names, handles, twin_names)
        versions = build_versions(self._cfg)
        ab = build_ab(self._cfg, metrics)
        self.service = InferenceService(specs, client, gatekeeper, metrics=metrics, admission=admission, router=router,
                                        versions=versions, ab=ab, adapters=build_adapters(self._cfg))
        # Guarded rollouts: every ingress replica counts outcomes into the A/B totals; the lease holder executes.
        self._rollouts, runner = build_rollouts(self._cfg, versions, self._deployer,
                                                ServiceProber(client, router, versions), metrics.registry, ab)
        if runner is not None:
            runner.start()  # Serve runs __init__ on the replica's event loop
        # Tenant series never go out on the REST port: only on this private listener.
        versions_of = {m.name: m.version for m in self._cfg.models}

        def refresh_warm_pool() -> None:  # at scrape time: the standbys this ingress routes around
            metrics.set_warm_replicas(warm_pool_rows(versions_of, self.service.replica_status()))

        refresh_warm_pool()
        self._control = HandleReplicaControl(by_target, resolve=self._deployer.handle_for_key)
        self._scaling = None
        if controller_enabled(self._cfg):
            from fleetserve.application.scaling_controller import ActorScalingControl, start_controller

            self._scaling = ActorScalingControl(start_controller(self._cfg))
        # The controller's series: on this listener too (/metrics/scaling), never on the REST port.
        extra = {"/metrics/scaling": self._scaling.metrics_text_blocking} if self._scaling is not None else None
        self._metrics_listener = MetricsServer.start(metrics.registry, listener_settings(self._cfg),
                                                     before_scrape=refresh_warm_pool, extra_paths=extra)
        metrics.address = self._metrics_listener.address
        self._grpc = None
        self._admin = None
        freeze_startup_heap()  # GC pauses under load scan only what serving allocates

    async def __serve_build_asgi_app__(self):
        versions = build_version_router(self.service.gatekeeper.authenticate_admin, self.service.versions,
                                        self._deployer, {m.name: m.checkpoint for m in self._cfg.models},
                                        read_body=read_model)
        rollouts = build_rollout_router(self.service.gatekeeper.authenticate_admin, read_model, self._rollouts,
                                        self._cfg.canary, {m.name: m.checkpoint for m in self._cfg.models})
        adapters = build_adapter_router(self.service, self._control)
        server = self._cfg.server
        kw = dict(max_body_bytes=server.max_request_body_bytes, control=self._control,
                  routers=(versions, rollouts, adapters), scaling=self._scaling, body_models=rollout_body_models(),
                  stream_send_timeout_s=server.stream_send_timeout_s)
        if server.admin_port is None:
            return build_rest_app(self.service, **kw)
        from fleetserve.application.admin_listener import AdminListener

        self._admin = AdminListener(build_rest_app(self.service, surface="admin", **kw), server.admin_host,
                                    server.admin_port)
        await self._admin.start()  # a port taken by something else fails the replica's start, loudly
        return build_rest_app(self.service, surface="tenant", **kw)

    def _grpc_servicer(self):
        if self._grpc is None:
            from fleetserve.api.grpc.servicer import InferenceServicer

            self._grpc = InferenceServicer(self.service, max_message_bytes=self._cfg.server.max_request_body_bytes)
        return self._grpc

    # gRPC methods: Serve's gRPC proxy routes by method name and passes ``grpc_context``.
    async def Generate(self, request, grpc_context=None):
        return await self._grpc_servicer().Generate(request, grpc_context)

    async def GenerateStream(self, request, grpc_context=None):
        async for item in self._grpc_servicer().GenerateStream(request, grpc_context):
            yield item

    async def ListModels(self, request, grpc_context=None):
        return await self._grpc_servicer().ListModels(request, grpc_context)
