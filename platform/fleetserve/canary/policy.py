"""The canary rollout policy: a pure ``decide(snapshot, state, now) -> decision``.

    registered -> loading -> warming -> health_check -> canary step 1 .. step N -> promoted
                      \\          \\            \\              \\ guardrail breach or unhealthy
                       +----------+------------+--> blocked    +--> rolled_back

- *Bring-up*: a load failure, a checksum mismatch, a warm-up or health failure, or a phase
  outlasting its timeout blocks the version with a reason (it never took traffic).
- *Steps*: each canary percentage is held for ``step_interval_s`` AND until both arms have
  ``min_sample_per_step`` requests in the step's window; no verdict before that sample.
  Then the guardrails compare canary with stable: a breach rolls back (the numbers go into
  the decision), a pass advances (after the last step: promoted). Once stable serves no
  traffic (the 100 % step) its last full window stands in as the reference.
- *Commands*: pause holds the current split (a breach still rolls back; timeouts stop);
  resume restarts the phase's window and hold; promote (only while the canary serves) and
  rollback end the rollout. Commands on a finished rollout are ignored with a note.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from fleetserve.canary.config import CanaryConfig
from fleetserve.canary.decision import RolloutDecision, Verdict
from fleetserve.canary.guardrails import evaluate
from fleetserve.canary.snapshot import Command, RolloutSnapshot
from fleetserve.canary.state import Phase, RolloutState
from fleetserve.canary.versions import VersionState


def decide(snapshot: RolloutSnapshot, state: RolloutState, now: float, config: CanaryConfig) -> RolloutDecision:
    """One step of the rollout state machine (see the module docstring)."""
    if state.terminal:
        notes = (f"command {snapshot.command.value} ignored: rollout is {state.phase.value}",) if snapshot.command else ()
        return _hold(state, config, notes)
    note: Optional[str] = None
    if snapshot.command is not None:
        done, note = _command(snapshot.command, state, now, config)
        if done is not None:
            return done
    if state.phase is Phase.PAUSED:
        out = _paused(snapshot, state, now, config)
    else:
        step = {Phase.REGISTERED: _registered, Phase.LOADING: _loading, Phase.WARMING: _warming,
                Phase.HEALTH_CHECK: _health_check, Phase.CANARY: _canary}[state.phase]
        out = step(snapshot, state, now, config)
    return replace(out, notes=(note,) + out.notes) if note else out


def weights(state: RolloutState, config: CanaryConfig) -> dict[str, float]:
    """The split a state asks for: stable only until the canary serves, then the step's share."""
    if state.phase is Phase.PROMOTED:
        return {state.canary_version: 1.0}
    if state.serving_phase is Phase.CANARY and state.step_index is not None:
        share = config.steps[state.step_index] / 100.0
        return {state.stable_version: 1.0 - share, state.canary_version: share}
    return {state.stable_version: 1.0}


# -- commands -------------------------------------------------------------------------


def _command(
    cmd: Command, state: RolloutState, now: float, config: CanaryConfig
) -> tuple[Optional[RolloutDecision], Optional[str]]:
    """Apply an operator command: (decision, None), or (None, why it changes nothing) so the
    call goes on with normal evaluation."""
    if cmd is Command.ROLLBACK:
        return _end(state, Phase.ROLLED_BACK, now, config, "rollback", "operator rollback"), None
    if cmd is Command.PROMOTE:
        if state.serving_phase is not Phase.CANARY:
            return None, f"promote refused: the canary is not serving yet ({state.serving_phase.value})"
        return _end(state, Phase.PROMOTED, now, config, "promote", f"operator promote at {_step_label(state, config)}"), None
    if cmd is Command.PAUSE:
        if state.phase is Phase.PAUSED:
            return None, "pause ignored: already paused"
        paused = state.moved(Phase.PAUSED, now, paused_from=state.phase)
        return _decision(paused, config, "pause", f"operator pause in {state.phase.value}"), None
    if state.phase is not Phase.PAUSED:  # RESUME
        return None, "resume ignored: not paused"
    resumed = state.moved(state.paused_from, now, paused_from=None)
    return _decision(resumed, config, "resume", f"operator resume into {resumed.phase.value}"), None


def _paused(snap: RolloutSnapshot, state: RolloutState, now: float, config: CanaryConfig) -> RolloutDecision:
    """Hold everything; only a guardrail breach or an unhealthy canary still ends a serving canary."""
    if state.paused_from is Phase.CANARY:
        ended = _canary_failures(snap, state, now, config)
        if ended is not None:
            return ended
    return _hold(state, config, ("paused",))


# -- bring-up ---------------------------------------------------------------------------


def _registered(snap: RolloutSnapshot, state: RolloutState, now: float, config: CanaryConfig) -> RolloutDecision:
    return _decision(state.moved(Phase.LOADING, now), config, "load", f"loading {state.canary_version}")


def _loading(snap: RolloutSnapshot, state: RolloutState, now: float, config: CanaryConfig) -> RolloutDecision:
    h = snap.health
    if h.checksum_ok is False:
        return _block(state, now, config, f"checksum mismatch: {h.checksum_error or 'checkpoint changed'}")
    if h.error:
        return _block(state, now, config, f"load failed: {h.error}")
    if h.loaded and h.checksum_ok:
        if config.warmup_requests == 0:
            return _decision(state.moved(Phase.HEALTH_CHECK, now), config, "health_check", "loaded, no warm-up")
        return _decision(state.moved(Phase.WARMING, now), config, "warm", "loaded and checksum verified")
    if now - state.phase_since >= config.load_timeout_s:
        missing = "not loaded" if not h.loaded else "checksum not verified"
        return _block(state, now, config, f"load timed out after {config.load_timeout_s:g}s ({missing})")
    return _hold(state, config, ("loading",))


def _warming(snap: RolloutSnapshot, state: RolloutState, now: float, config: CanaryConfig) -> RolloutDecision:
    h = snap.health
    if h.error:
        return _block(state, now, config, f"warm-up failed: {h.error}")
    if h.warmup_completed >= config.warmup_requests:
        return _decision(state.moved(Phase.HEALTH_CHECK, now), config, "health_check",
                         f"warm-up done ({h.warmup_completed} requests)")
    if now - state.phase_since >= config.warmup_timeout_s:
        return _block(state, now, config, f"warm-up timed out after {config.warmup_timeout_s:g}s "
                                          f"({h.warmup_completed}/{config.warmup_requests} requests)")
    return _hold(state, config, (f"warming {h.warmup_completed}/{config.warmup_requests}",))


def _health_check(snap: RolloutSnapshot, state: RolloutState, now: float, config: CanaryConfig) -> RolloutDecision:
    h = snap.health
    if h.healthy is False or h.error:
        return _block(state, now, config, f"health check failed: {h.error or 'unhealthy'}")
    if h.healthy:
        started = state.moved(Phase.CANARY, now, step_index=0)
        return _decision(started, config, "start_canary", f"healthy; canary at {_step_label(started, config)}")
    if now - state.phase_since >= config.health_check_timeout_s:
        return _block(state, now, config, f"health check unanswered after {config.health_check_timeout_s:g}s")
    return _hold(state, config, ("health check pending",))


# -- canary steps ----------------------------------------------------------------------


def _canary(snap: RolloutSnapshot, state: RolloutState, now: float, config: CanaryConfig) -> RolloutDecision:
    ended = _canary_failures(snap, state, now, config)
    if ended is not None:
        return ended
    verdict = _verdict(snap, state, config)
    if verdict is None:
        return _hold(state, config, (_waiting(snap, state, config),))
    held = now - state.phase_since
    if held < config.step_interval_s:
        note = f"holding {_step_label(state, config)}: {held:g}s of {config.step_interval_s:g}s"
        return _hold(state, config, (note,), verdict)
    label = _step_label(state, config)
    if state.step_index == len(config.steps) - 1:
        return _end(state, Phase.PROMOTED, now, config, "promote", f"guardrails passed at {label}", verdict)
    baseline = snap.stable if snap.stable.requests >= config.min_sample_per_step else state.baseline
    nxt = state.moved(Phase.CANARY, now, step_index=state.step_index + 1, baseline=baseline)
    return _decision(nxt, config, "advance", f"guardrails passed at {label}; now {_step_label(nxt, config)}", verdict)


def _canary_failures(snap: RolloutSnapshot, state: RolloutState, now: float, config: CanaryConfig) -> Optional[RolloutDecision]:
    """A rollback if the serving canary is unhealthy or breaches a guardrail, else None."""
    if snap.health.healthy is False:
        return _end(state, Phase.ROLLED_BACK, now, config, "rollback",
                    f"canary unhealthy at {_step_label(state, config)}: {snap.health.error or 'health check failed'}")
    verdict = _verdict(snap, state, config)
    if verdict is None or verdict.passed:
        return None
    why = "; ".join(c.describe() for c in verdict.breaches)
    return _end(state, Phase.ROLLED_BACK, now, config, "rollback",
                f"guardrail breach at {_step_label(state, config)}: {why}", verdict)


def _verdict(snap: RolloutSnapshot, state: RolloutState, config: CanaryConfig) -> Optional[Verdict]:
    """Guardrails over this window, or None while either side lacks the minimum sample."""
    need = config.min_sample_per_step
    if snap.canary.requests < need:
        return None
    if snap.stable.requests >= need:
        return evaluate(snap.stable, snap.canary, config)
    if state.baseline is not None and state.baseline.requests >= need:
        return evaluate(state.baseline, snap.canary, config, reference="baseline")
    return None


def _waiting(snap: RolloutSnapshot, state: RolloutState, config: CanaryConfig) -> str:
    need = config.min_sample_per_step
    return (f"waiting for sample at {_step_label(state, config)}: canary {snap.canary.requests}/{need}, "
            f"stable {snap.stable.requests}/{need}")


# -- building decisions -----------------------------------------------------------------


def _step_label(state: RolloutState, config: CanaryConfig) -> str:
    i = state.step_index if state.step_index is not None else 0
    return f"step {i + 1}/{len(config.steps)} ({config.steps[i]:g}%)"


def _block(state: RolloutState, now: float, config: CanaryConfig, reason: str) -> RolloutDecision:
    return _end(state, Phase.BLOCKED, now, config, "block", reason)


def _end(state, phase: Phase, now: float, config: CanaryConfig, event: str, reason: str,
         verdict: Optional[Verdict] = None) -> RolloutDecision:
    final = state.moved(phase, now, paused_from=None, reason=reason)
    if phase is Phase.PROMOTED:
        changes = {final.canary_version: VersionState.STABLE, final.stable_version: VersionState.RETIRED}
    elif phase is Phase.ROLLED_BACK:
        changes = {final.canary_version: VersionState.ROLLED_BACK}
    else:
        changes = {final.canary_version: VersionState.BLOCKED}
    return _decision(final, config, event, reason, verdict, changes)


def _decision(state, config, event=None, reason=None, verdict=None, version_states=None) -> RolloutDecision:
    if event == "load":
        version_states = {state.canary_version: VersionState.ROLLING_OUT}
    return RolloutDecision(state, weights(state, config), event, reason, verdict, version_states or {})


def _hold(state: RolloutState, config: CanaryConfig, notes: tuple[str, ...] = (),
          verdict: Optional[Verdict] = None) -> RolloutDecision:
    return RolloutDecision(state, weights(state, config), verdict=verdict, notes=notes)
