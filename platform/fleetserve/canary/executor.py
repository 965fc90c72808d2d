"""The rollout executor: observe, ``decide``, apply. A thin actuator around ``canary.policy``.

One :meth:`RolloutExecutor.tick` per live rollout:

1. *observe*: the stored state, the pending operator command, the canary's bring-up
   (deployment status from the deployer; warm-up and health requests through the prober),
   and both arms' outcomes in the current step window: the A/B recorder's per-variant
   totals (shared by every ingress replica) minus those saved when the window began;
2. *decide*: ``canary.policy.decide(snapshot, state, now, config)``, pure;
3. *apply*: weights and version states into the registry, the new state and a decision
   record (with the guardrail numbers) into the store, the deployment started on ``load``
   and scheduled for deletion on ``rollback``/``block``/``promote`` (after ``retire_delay_s``,
   once every ingress has stopped routing to it), metrics.

Everything the next tick needs is in the store, so a new executor (another ingress replica,
or the same one restarted) resumes at the same step: warm-up progress is the only thing
kept in memory, and a new executor just warms the canary again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Protocol

from fleetserve.canary.ab_records import VariantTotals
from fleetserve.canary.ab_window import arm_window
from fleetserve.canary.config import CanaryConfig
from fleetserve.canary.decision import RolloutDecision, Verdict
from fleetserve.canary.errors import RolloutConflictError, VersionConflictError
from fleetserve.canary.policy import decide
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.rollout_metrics import RolloutMetrics
from fleetserve.canary.rollout_store import DecisionRecord, RolloutSettings, RolloutStore
from fleetserve.canary.snapshot import ArmWindow, CanaryHealth, Command, RolloutSnapshot
from fleetserve.canary.state import Phase, RolloutState
from fleetserve.canary.versions import ModelVersion, VersionState
from fleetserve.canary.window import window_id
from fleetserve.clock import Clock, WallClock

log = logging.getLogger(__name__)

READY, FAILED, ABSENT = "ready", "failed", "absent"
RETIRING_EVENTS = frozenset({"rollback", "block"})


class Deployer(Protocol):
    """Starts, inspects and deletes one version's deployment (``admin_routes.VersionDeployer``)."""

    async def deploy(self, version: ModelVersion) -> None: ...

    async def status(self, model: str, version: str) -> tuple[str, str]: ...

    async def delete(self, model: str, version: str) -> None: ...


class VariantCounters(Protocol):
    """Each variant's cumulative outcome counters (``ab_recorder.ABRecorder``)."""

    async def variant_totals(self, model: str) -> dict[str, VariantTotals]: ...

    def drift_histograms(self, model: str, version: str) -> dict[str, tuple[int, ...]]: ...


class Prober(Protocol):
    """Sends one synthetic request straight to a version's replicas (no tenant, no metrics)."""

    async def probe(self, model: str, version: str) -> Optional[str]:
        """None when the request completed, else why it failed."""
        ...


@dataclass
class _Warmup:
    window: float  # the phase_since of the warming phase this count belongs to
    done: int = 0
    attempts: int = 0
    last_error: Optional[str] = None


@dataclass
class RolloutExecutor:
    """Applies the policy to every live rollout in the store (see the module docstring).

    ``config``: the ``canary`` section (a rollout's own settings override it);
    ``outcomes``: the per-variant counters the step windows are cut from;
    ``configured``: model -> the version in the main application (never deleted here);
    ``on_change``: called with a model after its split changed (the local VersionTable
    reloads at once instead of after ``registry_refresh_s``).
    """

    config: CanaryConfig
    registry: VersionRegistry
    rollouts: RolloutStore
    deployer: Deployer
    prober: Prober
    outcomes: VariantCounters
    configured: Mapping[str, str]
    clock: Clock = field(default_factory=WallClock)
    metrics: Optional[RolloutMetrics] = None
    on_change: Callable[[str], None] = lambda model: None
    _warm: dict[str, _Warmup] = field(default_factory=dict)
    _deploying: dict[str, asyncio.Task] = field(default_factory=dict)

    # ---- the loop body ------------------------------------------------------------------

    async def tick_all(self) -> list[DecisionRecord]:
        """One tick of every live rollout, then due deployment deletions. Returns the records logged."""
        out = []
        for model, state in sorted((await self.rollouts.states()).items()):
            if not state.terminal:
                rec = await self.tick(model)
                if rec is not None:
                    out.append(rec)
        await self._retire_due()
        return out

    async def tick(self, model: str) -> Optional[DecisionRecord]:
        """Observe, decide, apply for one model. Returns the logged record when something happened."""
        state = await self.rollouts.state(model)
        if state is None or state.terminal:
            return None
        config = (await self.rollouts.settings(model)).apply(self.config)
        command = await self.rollouts.pending_command(model)
        snapshot = await self.observe(state, config, command)
        decision = decide(snapshot, state, self.clock.now(), config)
        record = await self.apply(decision, state, snapshot)
        if command is not None:
            await self.rollouts.clear_command(model)
        return record

    # ---- observe ------------------------------------------------------------------------

    async def observe(self, state: RolloutState, config: CanaryConfig, command: Optional[Command]) -> RolloutSnapshot:
        health = await self._health(state, config)
        stable, canary = await self.arms(state) or (ArmWindow(), ArmWindow())
        return RolloutSnapshot(health, stable, canary, command)

    async def arms(self, state: RolloutState) -> Optional[tuple[ArmWindow, ArmWindow]]:
        """(stable, canary) over the live step window; None when the canary serves no traffic."""
        window = window_id(state)
        if window is None:
            return None
        totals = await self.outcomes.variant_totals(state.model)
        start = await self.rollouts.window_start(state.model, window)
        if start is None:  # the save at the window's start did not happen (a crash): start now
            await self.rollouts.save_window_start(state.model, window, totals)
            start = await self.rollouts.window_start(state.model, window) or totals
        return tuple(arm_window(start.get(v), totals.get(v, VariantTotals()),
                                self.outcomes.drift_histograms(state.model, v))
                     for v in (state.stable_version, state.canary_version))

    async def _health(self, state: RolloutState, config: CanaryConfig) -> CanaryHealth:
        model, version = state.model, state.canary_version
        if state.phase is Phase.REGISTERED or state.terminal:
            return CanaryHealth()
        status, message = await self.deployer.status(model, version)
        if status == FAILED:
            if "checksum mismatch" in message:
                return CanaryHealth(checksum_ok=False, checksum_error=message)
            return CanaryHealth(error=message or "deployment failed", healthy=False)
        if status == ABSENT and state.phase is Phase.LOADING:
            self._deploy_soon(model, version)  # a restarted executor, or a deploy Serve lost: start it (again)
            return CanaryHealth()
        if status != READY:
            # Loading, or (once serving) a replica Serve is replacing: no verdict on health yet.
            return CanaryHealth(healthy=False, error=f"deployment {status}") if status == ABSENT else CanaryHealth()
        if state.phase is Phase.WARMING:
            return await self._warm_up(state, config)
        if state.phase is Phase.HEALTH_CHECK:
            return await self._health_check(state, config)
        return CanaryHealth(loaded=True, checksum_ok=True, warmup_completed=config.warmup_requests, healthy=True)

    async def _warm_up(self, state: RolloutState, config: CanaryConfig) -> CanaryHealth:
        """Synthetic requests until ``warmup_requests`` succeeded; gives up (an error: the
        version is blocked) after ``warmup_requests * warmup_attempts_factor`` attempts."""
        w = self._warm.get(state.model)
        if w is None or w.window != state.phase_since:
            w = self._warm[state.model] = _Warmup(state.phase_since)
        budget = config.warmup_requests * config.warmup_attempts_factor
        while w.done < config.warmup_requests and w.attempts < budget:
            w.attempts += 1
            error = await self.prober.probe(state.model, state.canary_version)
            if error is None:
                w.done += 1
            else:
                w.last_error = error
        error = None
        if w.done < config.warmup_requests:
            error = f"{w.attempts - w.done} of {w.attempts} warm-up requests failed (last: {w.last_error})"
        return CanaryHealth(loaded=True, checksum_ok=True, warmup_completed=w.done, error=error)

    async def _health_check(self, state: RolloutState, config: CanaryConfig) -> CanaryHealth:
        """Healthy when the deployment runs and one of ``warmup_attempts_factor`` requests completes."""
        error = None
        for _ in range(config.warmup_attempts_factor):
            error = await self.prober.probe(state.model, state.canary_version)
            if error is None:
                return CanaryHealth(loaded=True, checksum_ok=True, warmup_completed=config.warmup_requests,
                                    healthy=True)
        return CanaryHealth(loaded=True, checksum_ok=True, warmup_completed=config.warmup_requests, healthy=False,
                            error=error)

    # ---- apply --------------------------------------------------------------------------

    async def apply(self, decision: RolloutDecision, before: RolloutState,
                    snapshot: RolloutSnapshot) -> Optional[DecisionRecord]:
        """Registry first (weights, then version states), then the state; the deployment
        actions last, so a crash in between repeats at most an idempotent action."""
        new = decision.state
        model = new.model
        if dict(decision.weights) != await self.registry.weights(model):
            await self.registry.set_weights(model, decision.weights)
            self.on_change(model)
        for version, vstate in decision.version_states.items():
            reason = (decision.reason or vstate.value) if vstate is VersionState.BLOCKED else None
            await self.registry.set_state(model, version, vstate, reason)
            self.on_change(model)
        if new != before:
            await self.rollouts.save_state(new)
        if window_id(new) != window_id(before):
            await self.rollouts.drop_windows(model, window_id(new))
            if window_id(new) is not None:
                await self.rollouts.save_window_start(model, window_id(new), await self.outcomes.variant_totals(model))
        now = self.clock.now()
        if decision.event == "load":
            self._deploy_soon(model, new.canary_version)
        elif decision.event in RETIRING_EVENTS:
            await self.rollouts.schedule_retire(model, new.canary_version, now + self.config.retire_delay_s)
        elif decision.event == "promote" and new.stable_version != self.configured.get(model):
            await self.rollouts.schedule_retire(model, new.stable_version, now + self.config.retire_delay_s)
        if self.metrics is not None:
            self.metrics.observe(decision)
        if decision.event is None:
            return None  # a hold: the status shows the live window and the notes
        record = _record(decision, now, snapshot)
        log.info("rollout %s@%s: %s (%s)", model, new.canary_version, decision.event, decision.reason)
        return await self.rollouts.append_decision(model, record)

    def _deploy_soon(self, model: str, version_id: str) -> None:
        """Start the deployment in the background (Serve's deploy call waits for the replicas,
        which would stall every rollout's tick)."""

        async def run() -> None:
            await self.deployer.deploy(await self.registry.require(model, version_id))

        self._background(f"deploy {model}@{version_id}", run())

    def _background(self, key: str, work) -> None:
        """Run ``work`` as a task, at most one per key at a time (a later tick retries)."""
        if key in self._deploying:
            work.close()
            return

        async def run() -> None:
            try:
                await work
            except Exception:  # noqa: BLE001 - the next status read reports the failure
                log.exception("%s failed", key)

        task = asyncio.get_running_loop().create_task(run())
        self._deploying[key] = task
        task.add_done_callback(lambda _t: self._deploying.pop(key, None))

    async def idle(self) -> None:
        """Wait for background deployments (tests, shutdown)."""
        if self._deploying:
            await asyncio.gather(*self._deploying.values(), return_exceptions=True)

    async def _retire_due(self) -> None:
        """Delete the deployments whose delay is over, in the background (Serve's delete waits
        for the replicas to drain, which would stall the tick and let the lease lapse)."""
        for model, version in await self.rollouts.due_retirements(self.clock.now()):
            if version == self.configured.get(model):
                await self.rollouts.retired(model, version)  # the main application's: kept
            else:
                self._background(f"delete {model}@{version}", self._delete(model, version))

    async def _delete(self, model: str, version: str) -> None:
        await self.deployer.delete(model, version)  # Serve drains its replicas
        await self.rollouts.retired(model, version)

    # ---- commands from the admin API ------------------------------------------------------

    async def start(self, model: str, version: ModelVersion, settings: RolloutSettings) -> RolloutState:
        """Begin rolling out a registered ``version`` against the model's current stable one."""
        settings.apply(self.config)  # a bad step list is refused here, not at the first tick
        current = await self.rollouts.state(model)
        if current is not None and not current.terminal:
            raise RolloutConflictError(f"a rollout of {model}@{current.canary_version} is {current.phase.value}; "
                                       "promote or roll it back first", field="version")
        if version.state is VersionState.BLOCKED:
            raise VersionConflictError(f"version {version.label} is blocked ({version.blocked_reason})", field="version")
        stable = await self.stable_version(model)
        if version.version_id == stable:
            raise VersionConflictError(f"{version.label} is already the stable version", field="version")
        state = RolloutState(model, stable, version.version_id, phase_since=self.clock.now())
        await self.rollouts.save_settings(model, settings)
        await self.rollouts.clear_log(model)
        await self.rollouts.clear_command(model)
        await self.rollouts.drop_windows(model, None)
        await self.rollouts.save_state(state)
        self._warm.pop(model, None)
        await self.rollouts.append_decision(model, DecisionRecord(self.clock.now(), "start", state.phase.value, None,
                                                                  {stable: 1.0}, f"rollout of {version.label} "
                                                                  f"against {model}@{stable} started"))
        self.on_change(model)
        return state

    async def stable_version(self, model: str) -> str:
        """The version now serving as stable: the registry's ``stable`` one, else the configured one."""
        stables = [v.version_id for v in await self.registry.versions(model) if v.state is VersionState.STABLE]
        configured = self.configured[model]
        return configured if configured in stables or not stables else stables[-1]


def _record(decision: RolloutDecision, now: float, snapshot: RolloutSnapshot) -> DecisionRecord:
    """The log entry of a transition: what, why, the split, the verdict and both arms' windows."""
    s = decision.state
    return DecisionRecord(now, decision.event, s.phase.value, s.step_index, dict(decision.weights), decision.reason,
                          verdict_dict(decision.verdict), decision.notes,
                          snapshot.stable.to_dict() if snapshot.stable.requests else None,
                          snapshot.canary.to_dict() if snapshot.canary.requests else None)


def verdict_dict(v: Optional[Verdict]) -> Optional[dict]:
    if v is None:
        return None
    return {"passed": v.passed, "reference": v.reference, "canary_requests": v.canary_requests,
            "stable_requests": v.stable_requests,
            "checks": [{"name": c.name, "canary": c.canary, "stable": c.stable, "limit": c.limit,
                        "breached": c.breached} for c in v.checks]}

