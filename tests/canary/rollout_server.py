"""A real HTTP server (uvicorn in a thread, loopback) with the version and rollout admin routes
over a memory store, a deployer whose versions are ready at once and a prober that always
answers, and the rollout runner ticking: what the CLI tests talk to."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetserve.api.errors import http_error
from fleetserve.api.json_body import read_model
from fleetserve.canary.admin_routes import build_version_router
from fleetserve.canary.executor import RolloutExecutor
from fleetserve.canary.ab_recorder import ABRecorder
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.rollout_routes import build_rollout_router
from fleetserve.canary.rollout_store import RolloutStore
from fleetserve.canary.runner import RolloutRunner
from fleetserve.canary.serving import VersionTable
from fleetserve.canary.store import MemoryCanaryStore
from fleetserve.errors import AuthenticationError, FleetserveError
from tests.canary.factories import make_config
from tests.tenants.admin_server import serve_asgi

ADMIN = "fs-admin-test"
MODEL = "m"


class ReadyDeployer:
    def __init__(self):
        self.deployed: dict[str, str] = {}

    async def deploy(self, version):
        self.deployed[version.version_id] = "ready"

    async def status(self, model, version):
        return self.deployed.get(version, "absent"), ""

    async def delete(self, model, version):
        self.deployed.pop(version, None)


class OkProber:
    async def probe(self, model, version):
        return None


async def authenticate_admin(header):
    if header != f"Bearer {ADMIN}":
        raise AuthenticationError("invalid admin key")


def checkpoint(root: Path, name: str) -> str:
    d = root / name
    d.mkdir()
    (d / "model.safetensors").write_bytes(name.encode())
    (d / "config.json").write_text("{}")
    return str(d)


def rollout_app(root: Path) -> FastAPI:
    config = make_config(step_interval_s=0.2, min_sample_per_step=1, warmup_requests=1, tick_s=0.05, lease_s=1,
                         registry_refresh_s=0.05, retire_delay_s=0.1, enabled=True)
    table = VersionTable({MODEL: "v1"}, VersionRegistry(MemoryCanaryStore()), refresh_s=0.05)
    deployer = ReadyDeployer()
    rollouts = RolloutStore(table.registry.store)
    executor = RolloutExecutor(config, table.registry, rollouts, deployer, OkProber(), ABRecorder.in_memory(),
                               {MODEL: "v1"}, on_change=table.invalidate)
    runner = RolloutRunner(executor, rollouts, config.tick_s, config.lease_s)
    checkpoints = {MODEL: checkpoint(root, "v1")}
    app = FastAPI(on_startup=[runner.start])
    app.include_router(build_version_router(authenticate_admin, table, deployer, checkpoints, read_body=read_model))
    app.include_router(build_rollout_router(authenticate_admin, read_model, executor, config, checkpoints))

    @app.exception_handler(FleetserveError)
    async def _err(_req: Request, exc: FleetserveError):
        status, body, headers = http_error(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    return app


def serve_rollouts(root: Path, timeout_s: float = 10.0):
    """The rollout app on a free loopback port for the duration of the block."""
    return serve_asgi(rollout_app(root), timeout_s)
