"""Model versions on Ray Serve: each non-stable version of a model is its own Serve application.

Why an application per version: Serve redeploys an application as a whole, so adding a
deployment to the main application at runtime would mean redeploying it (and, through the
ingress's bound arguments, the ingress). A version in its own application is deployed,
scaled, failed and deleted without touching the ingress or any other version's replicas.
The ingress reaches it lazily by name (``serve.get_deployment_handle(deployment,
app_name=...)``, Ray 2.60), so every ingress replica finds a version another one deployed.
The stable (configured) version stays in the main application, reached as today.

Each version application is a full fleet like the stable deployment: the model deployment
gets the same options (``build.model_options``: fleetserve's replica router, the scaling
controller's count hook), so its replicas report to the replica stats board, take pinned
calls (park, wake, drain one replica) and advertise their replica links. Under HAProxy Serve
refuses a custom request router on an application's *ingress* (``build_app``, Ray 2.60), so
the model deployment is not the ingress: a zero-CPU :class:`VersionIngress` is, holding its
handle and taking no traffic (the application has no route prefix).

Names are derived, never stored: application ``<app>--<model>--<version>``, deployment
``model-<model>--<version>`` (distinct from the stable one: the replica stats board is keyed
by deployment name).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from typing import Optional

from fleetserve.application.build import deployment_name, model_options, on_demand_resources
from fleetserve.canary.versions import ModelVersion, verify
from fleetserve.config import FleetConfig

log = logging.getLogger(__name__)

READY, DEPLOYING, FAILED, ABSENT = "ready", "deploying", "failed", "absent"
VERSION_INGRESS = "version-ingress"


class VersionIngress:
    """A runtime version application's ingress: it holds the model deployment's handle and
    serves nothing (see the module docstring for why it exists)."""

    def __init__(self, replica) -> None:
        self._replica = replica


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", s)


def version_slug(version: str) -> str:
    """A version id as its application's name spells it (``app_name``'s last part)."""
    return _slug(version)


class ServeVersionDeployer:
    """Deploys, inspects and deletes the Serve application of one model version."""

    def __init__(self, cfg: FleetConfig) -> None:
        self._cfg = cfg

    def app_name(self, model: str, version: str) -> str:
        return f"{self._cfg.server.app_name}--{_slug(model)}--{_slug(version)}"

    def deployment(self, model: str, version: str) -> str:
        return f"{deployment_name(self._cfg.model(model))}--{_slug(version)}"

    def split_key(self, key: str) -> Optional[tuple[str, str]]:
        """``model@version`` -> (model, version) for a configured model, else None."""
        model, sep, version = key.rpartition("@")
        if not sep or not version or model not in {m.name for m in self._cfg.models}:
            return None
        return model, version

    def deployment_for_key(self, key: str) -> Optional[str]:
        parts = self.split_key(key)
        return self.deployment(*parts) if parts else None

    def handle_for_key(self, key: str):
        """The DeploymentHandle of ``model@version`` (no controller round trip: a version not
        deployed fails at call time with Serve's own error)."""
        parts = self.split_key(key)
        if parts is None:
            return None
        from ray import serve

        return serve.get_deployment_handle(self.deployment(*parts), app_name=self.app_name(*parts), _check_exists=False)

    def application(self, version: ModelVersion):
        """The bound Serve application of ``version``: :class:`VersionIngress` over its model
        deployment, which has the stable deployment's options under the version's name."""
        from ray import serve

        from fleetserve.application.metrics_port import listener_settings
        from fleetserve.deployments.replica import ModelReplica

        base = self._cfg.model(version.model)
        m = base.model_copy(update={"checkpoint": version.checkpoint, "engine": version.engine,
                                    "engine_args": {**base.engine_args, **dict(version.engine_args)},
                                    "version": version.version_id})
        opts = model_options(m, self._cfg)  # starts at the policy's idle plan, warm pool included, like the stable one
        opts["name"] = self.deployment(version.model, version.version_id)
        check = functools.partial(verify, version.checkpoint, version.checksum, label=version.label,
                                  expected_files=dict(version.files))
        replica = serve.deployment(ModelReplica).options(**opts).bind(
            m.model_dump(mode="json"), None, link=self._cfg.server.replica_transport == "direct", verify_checkpoint=check,
            metrics=listener_settings(self._cfg))
        ingress = serve.deployment(VersionIngress).options(
            name=VERSION_INGRESS, num_replicas=1, ray_actor_options={"num_cpus": 0, "resources": on_demand_resources(self._cfg)})
        return ingress.bind(replica)

    async def deploy(self, version: ModelVersion) -> None:
        """Start the version's application (returns once Serve accepted it; replicas load after)."""
        from ray import serve

        app = self.application(version)
        try:
            await asyncio.to_thread(serve.run, app, name=self.app_name(version.model, version.version_id),
                                    route_prefix=None, blocking=False)
        except RuntimeError as exc:
            # serve.run waits for the deployment to be created: a replica that refuses its
            # checkpoint fails it right here. status() reports it (and the version is blocked).
            log.warning("deployment of %s failed: %s", version.label, exc)

    async def status(self, model: str, version: str) -> tuple[str, str]:
        """(``ready`` | ``deploying`` | ``failed`` | ``absent``, Serve's message)."""
        from ray import serve

        st = await asyncio.to_thread(serve.status)
        app = st.applications.get(self.app_name(model, version))
        if app is None:
            return ABSENT, ""
        status = str(getattr(app.status, "value", app.status))
        if status == "RUNNING":
            return READY, ""
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            msgs = [app.message] + [d.message for d in app.deployments.values()]
            return FAILED, "; ".join(m for m in msgs if m)
        return DEPLOYING, app.message or ""

    async def delete(self, model: str, version: str) -> None:
        """Delete the application; Serve drains its replicas (graceful shutdown)."""
        from ray import serve

        await asyncio.to_thread(serve.delete, self.app_name(model, version), _blocking=True)
