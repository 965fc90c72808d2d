"""Admin REST routes for guarded rollouts (admin key, checked before the body is read).

    POST /admin/models/{model}/rollout            start: {version, checkpoint?, engine?, engine_args?,
                                                  steps?, interval_s?, min_sample?} -> 201 + status
    GET  /admin/models/{model}/rollout            status: phase, step, split, live window, decisions
    POST /admin/models/{model}/rollout/{command}  pause | resume | promote | rollback -> status once the
                                                  executor applied it (202 while still queued)

A start with a ``checkpoint`` registers the version first (checksum computed now); without
one, the version must be registered already (its recorded checksum is what the replica
verifies). Commands are queued in the store and applied by whichever ingress replica holds
the executor lease, so any replica may take the call.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetserve.canary.admin_routes import VersionCreate, WeightsBody, json_body_ref
from fleetserve.canary.config import CanaryConfig
from fleetserve.canary.errors import RolloutConflictError, VersionConflictError
from fleetserve.canary.executor import RolloutExecutor
from fleetserve.canary.rollout_store import RolloutSettings
from fleetserve.canary.snapshot import Command
from fleetserve.canary.state import RolloutState
from fleetserve.canary.versions import ModelVersion, VersionState, make_version
from fleetserve.errors import ModelNotFoundError, NotFoundError

COMMANDS = tuple(c.value for c in Command)
BodyReader = Callable[[Request, type[BaseModel]], Awaitable[BaseModel]]


class RolloutStart(BaseModel):
    """Body of POST /admin/models/{model}/rollout."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                         description="Version id to roll out.")
    checkpoint: Optional[str] = Field(None, description="Checkpoint directory; registers the version when it is new.")
    engine: str = Field("native", description="Engine backend of the new version (when registering it).")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Engine args merged over the model's.")
    steps: Optional[list[float]] = Field(None, description="Canary percentages (default: canary.steps).")
    interval_s: Optional[float] = Field(None, gt=0, description="Hold per step (default: canary.step_interval_s).")
    min_sample: Optional[int] = Field(None, ge=1, description="Requests per arm before a verdict "
                                                              "(default: canary.min_sample_per_step).")


def body_models() -> tuple[type[BaseModel], ...]:
    """The admin bodies of the version and rollout routes, for the OpenAPI components."""
    return (VersionCreate, WeightsBody, RolloutStart)


def build_rollout_router(authenticate_admin: Callable[[Optional[str]], Awaitable[None]], read_body: BodyReader,
                         executor: Optional[RolloutExecutor], config: CanaryConfig,
                         checkpoints: dict[str, str]) -> APIRouter:
    """``executor`` None: rollouts are disabled (``canary.enabled: false``) and every route
    answers 409 after authentication."""
    router = APIRouter(prefix="/admin/models", tags=["admin"])

    async def admin(request: Request, model: str) -> RolloutExecutor:
        await authenticate_admin(request.headers.get("authorization"))  # before anything else is read
        if model not in checkpoints:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")
        if executor is None:
            raise RolloutConflictError("guarded rollouts are disabled (canary.enabled: false)", field="canary.enabled")
        return executor

    @router.post("/{model}/rollout", status_code=201, openapi_extra=json_body_ref(RolloutStart))
    async def start(model: str, request: Request) -> dict:
        ex = await admin(request, model)
        body: RolloutStart = await read_body(request, RolloutStart)
        settings = RolloutSettings(tuple(body.steps) if body.steps else None, body.interval_s, body.min_sample)
        settings.apply(ex.config)  # refused before anything is registered
        version = await _version(ex, model, body, checkpoints[model])
        await ex.start(model, version, settings)
        return await status_of(ex, model)

    @router.get("/{model}/rollout")
    async def status(model: str, request: Request) -> dict:
        return await status_of(await admin(request, model), model)

    @router.post("/{model}/rollout/{command}")
    async def command(model: str, command: str, request: Request) -> Any:
        ex = await admin(request, model)
        if command not in COMMANDS:  # checked here, after the key: FastAPI's own check would answer first
            raise NotFoundError(f"unknown rollout command `{command}`; one of {', '.join(COMMANDS)}", field="command")
        state = await ex.rollouts.state(model)
        if state is None:
            raise NotFoundError(f"no rollout of `{model}` was started", field="model")
        await ex.rollouts.put_command(model, Command(command))
        applied = await _wait_applied(ex, model, timeout_s=max(5.0, 3 * config.tick_s + config.lease_s))
        out = await status_of(ex, model)
        if applied:
            return out
        from fastapi.responses import JSONResponse

        return JSONResponse({**out, "queued": command}, status_code=202)

    return router


async def _version(ex: RolloutExecutor, model: str, body: RolloutStart, stable_checkpoint: str) -> ModelVersion:
    """The version to roll out: registered now when new (with a checkpoint), else the stored one."""
    reg = ex.registry
    stable = ex.configured[model]
    if await reg.get(model, stable) is None:
        v = await asyncio.to_thread(make_version, model, stable, stable_checkpoint, state=VersionState.STABLE)
        try:
            await reg.register(v)
        except VersionConflictError:
            pass  # another ingress replica registered it meanwhile
    existing = await reg.get(model, body.version)
    if existing is not None:
        if body.checkpoint is not None and body.checkpoint != existing.checkpoint:
            raise RolloutConflictError(f"version {existing.label} is registered with checkpoint {existing.checkpoint}, "
                                       f"not {body.checkpoint}; pick a new version id", field="checkpoint")
        return existing
    if body.checkpoint is None:
        raise NotFoundError(f"version {model}@{body.version} is not registered; pass its checkpoint", field="checkpoint")
    v = await asyncio.to_thread(make_version, model, body.version, body.checkpoint, engine=body.engine,
                                engine_args=body.engine_args)
    return await reg.register(v)


async def _wait_applied(ex: RolloutExecutor, model: str, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await ex.rollouts.pending_command(model) is None:
            return True
        await asyncio.sleep(0.1)  # polling the store for the executor's tick
    return False


async def status_of(ex: RolloutExecutor, model: str) -> dict:
    """Everything ``fleetserve rollout status`` shows, as JSON."""
    state: Optional[RolloutState] = await ex.rollouts.state(model)
    if state is None:
        raise NotFoundError(f"no rollout of `{model}` was started", field="model")
    config = (await ex.rollouts.settings(model)).apply(ex.config)
    arms = await ex.arms(state)
    step = state.step_index
    return {
        "model": model, "stable": state.stable_version, "canary": state.canary_version, "phase": state.phase.value,
        "paused_from": state.paused_from.value if state.paused_from else None, "reason": state.reason,
        "since": state.phase_since, "held_s": max(0.0, ex.clock.now() - state.phase_since),
        "step": None if step is None else {"index": step + 1, "of": len(config.steps), "percent": config.steps[step]},
        "steps": list(config.steps), "step_interval_s": config.step_interval_s,
        "min_sample_per_step": config.min_sample_per_step, "weights": await ex.registry.weights(model),
        "window": None if arms is None else {"stable": arms[0].to_dict(), "canary": arms[1].to_dict()},
        "pending_command": (c.value if (c := await ex.rollouts.pending_command(model)) else None),
        "decisions": [r.to_dict() for r in await ex.rollouts.decisions(model, last=50)],
    }
