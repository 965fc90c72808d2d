"""The rollout policy through every transition, with a fake clock."""

from dataclasses import replace

import pytest

from fleetserve.canary.policy import decide
from fleetserve.canary.snapshot import ArmWindow, CanaryHealth, Command
from fleetserve.canary.state import Phase, RolloutState
from fleetserve.canary.versions import VersionState
from fleetserve.clock import FakeClock

from tests.canary.factories import arm, make_config, make_snapshot

STEPS = (1, 5, 25, 50, 100)
NOT_LOADED = CanaryHealth()
LOADED = CanaryHealth(loaded=True, checksum_ok=True)
WARMED = replace(LOADED, warmup_completed=4)
HEALTHY = replace(WARMED, healthy=True)


class Rollout:
    """A rollout driven by hand: each tick advances the fake clock, then calls decide."""

    def __init__(self, **config):
        self.clock = FakeClock(1000.0)
        self.config = make_config(**config)
        self.state = RolloutState(model="m", stable_version="v1", canary_version="v2")
        self.last = None

    def tick(self, advance: float = 0.0, **snapshot):
        self.clock.advance(advance)
        self.last = decide(make_snapshot(**snapshot), self.state, self.clock.now(), self.config)
        self.state = self.last.state
        return self.last

    def to_canary(self):
        """Bring-up to step 1 (1 %)."""
        assert self.tick(health=NOT_LOADED).event == "load"
        assert self.tick(5, health=LOADED).event == "warm"
        assert self.tick(5, health=WARMED).event == "health_check"
        assert self.tick(1, health=HEALTHY).event == "start_canary"
        return self

    def to_step(self, index: int):
        self.to_canary()
        for _ in range(index):
            assert self.tick(self.config.step_interval_s).event == "advance"
        assert self.state.step_index == index
        return self


def test_happy_path_through_every_phase_and_step_to_promotion():
    r = Rollout()
    d = r.tick(health=NOT_LOADED)
    assert (d.event, r.state.phase, d.weights) == ("load", Phase.LOADING, {"v1": 1.0})
    assert d.version_states == {"v2": VersionState.ROLLING_OUT}
    assert r.tick(10, health=replace(NOT_LOADED, loaded=True)).event is None  # checksum not verified yet
    assert r.tick(1, health=LOADED).state.phase is Phase.WARMING
    assert r.tick(1, health=replace(LOADED, warmup_completed=3)).notes == ("warming 3/4",)
    assert r.tick(1, health=WARMED).state.phase is Phase.HEALTH_CHECK
    assert r.tick(1, health=WARMED).notes == ("health check pending",)
    d = r.tick(1, health=HEALTHY)
    assert (d.event, r.state.phase, r.state.step_index) == ("start_canary", Phase.CANARY, 0)
    assert d.weights == pytest.approx({"v1": 0.99, "v2": 0.01})
    for i, pct in enumerate(STEPS[1:], start=1):
        assert r.tick(59).event is None  # held: 59 s of 60
        d = r.tick(1)
        assert (d.event, r.state.step_index) == ("advance", i)
        assert d.weights == pytest.approx({"v1": 1 - pct / 100, "v2": pct / 100})
        assert d.verdict.passed and r.state.phase_since == r.clock.now()
    d = r.tick(60, stable=arm(requests=0))  # 100 %: stable serves nobody; its baseline stands in
    assert (d.event, r.state.phase, d.weights) == ("promote", Phase.PROMOTED, {"v2": 1.0})
    assert d.verdict.reference == "baseline" and d.reason == "guardrails passed at step 5/5 (100%)"
    assert d.version_states == {"v2": VersionState.STABLE, "v1": VersionState.RETIRED}


def test_no_warmup_goes_straight_to_the_health_check():
    r = Rollout(warmup_requests=0)
    r.tick(health=NOT_LOADED)
    assert r.tick(1, health=LOADED).state.phase is Phase.HEALTH_CHECK


@pytest.mark.parametrize("step", range(len(STEPS)))
@pytest.mark.parametrize("canary, metric", [
    (arm(errors=25), "error_rate"),  # 2.5 % vs 0 % + 1 point
    (arm(ttft=0.25), "ttft_p95_s"),  # 0.25 s vs 0.2 * 1.2
    (arm(tpot=0.03), "tpot_p95_s"),  # 30 ms vs 20 * 1.2
])
def test_a_breach_at_any_step_rolls_back_with_the_numbers(step, canary, metric):
    r = Rollout().to_step(step)
    stable = arm(requests=0) if STEPS[step] == 100 else arm()
    d = r.tick(1, stable=stable, canary=canary)
    assert (d.event, r.state.phase, d.weights) == ("rollback", Phase.ROLLED_BACK, {"v1": 1.0})
    assert [c.name for c in d.verdict.breaches] == [metric]
    breach = d.verdict.breaches[0]
    assert breach.canary > breach.limit and f"step {step + 1}/5 ({STEPS[step]}%)" in d.reason
    assert metric in d.reason and d.version_states == {"v2": VersionState.ROLLED_BACK}


def test_within_the_margins_is_not_a_breach():
    r = Rollout().to_canary()
    d = r.tick(60, stable=arm(errors=10, ttft=0.2, tpot=0.02), canary=arm(errors=20, ttft=0.24, tpot=0.024))
    assert d.event == "advance" and d.verdict.passed  # 2 % vs 1 % + 1 point; exactly 1.2x


def test_no_verdict_before_the_minimum_sample_on_both_arms():
    r = Rollout().to_canary()
    bad = arm(requests=99, errors=99)
    d = r.tick(600, canary=bad)  # far past the interval, awful, but 99 < 100 requests
    assert d.event is None and d.verdict is None and r.state.phase is Phase.CANARY
    assert d.notes == ("waiting for sample at step 1/5 (1%): canary 99/100, stable 1000/100",)
    assert r.tick(1, stable=arm(requests=50), canary=arm(errors=500)).event is None  # stable short, no baseline
    assert r.tick(1, canary=arm(requests=100, errors=100)).event == "rollback"  # the 100th request tips it


def test_the_step_is_held_for_its_interval_even_with_the_sample():
    r = Rollout().to_canary()
    d = r.tick(30)
    assert d.event is None and d.verdict.passed and d.notes == ("holding step 1/5 (1%): 30s of 60s",)
    assert r.tick(30).event == "advance"


def test_drift_breach_only_when_enabled():
    hist = {"prompt_length": (250, 250, 250, 250)}
    shifted = {"prompt_length": (100, 200, 300, 400)}  # PSI 0.228
    for enabled, event in ((False, "advance"), (True, "rollback")):
        r = Rollout(drift={"enabled": enabled}).to_canary()
        d = r.tick(60, stable=arm(histograms=hist), canary=arm(histograms=shifted))
        assert d.event == event
    assert d.verdict.breaches[0].name == "psi_prompt_length"
    assert d.verdict.breaches[0].canary == pytest.approx(0.228218, abs=1e-6)
    r = Rollout(drift={"enabled": True, "psi_threshold": 0.25}).to_canary()
    assert r.tick(60, stable=arm(histograms=hist), canary=arm(histograms=shifted)).event == "advance"


@pytest.mark.parametrize("phase_health, failing, reason", [
    (NOT_LOADED, replace(NOT_LOADED, checksum_ok=False, checksum_error="model.safetensors changed"),
     "checksum mismatch: model.safetensors changed"),
    (NOT_LOADED, replace(NOT_LOADED, error="CUDA out of memory"), "load failed: CUDA out of memory"),
    (LOADED, replace(LOADED, error="engine died"), "warm-up failed: engine died"),
    (WARMED, replace(WARMED, healthy=False, error="probe 500"), "health check failed: probe 500"),
])
def test_bring_up_failures_block_with_a_reason(phase_health, failing, reason):
    r = Rollout()
    r.tick(health=NOT_LOADED)
    if phase_health is not NOT_LOADED:
        r.tick(1, health=LOADED)
    if phase_health is WARMED:
        r.tick(1, health=WARMED)
    d = r.tick(1, health=failing)
    assert (d.event, r.state.phase, r.state.reason, d.weights) == ("block", Phase.BLOCKED, reason, {"v1": 1.0})
    assert d.version_states == {"v2": VersionState.BLOCKED}


@pytest.mark.parametrize("prefix, health, timeout, reason", [
    ((), replace(NOT_LOADED, loaded=True), "load_timeout_s", "load timed out after 300s (checksum not verified)"),
    ((LOADED,), replace(LOADED, warmup_completed=1), "warmup_timeout_s", "warm-up timed out after 120s (1/4 requests)"),
    ((LOADED, WARMED), WARMED, "health_check_timeout_s", "health check unanswered after 30s"),
])
def test_bring_up_timeouts_block(prefix, health, timeout, reason):
    r = Rollout()
    r.tick(health=NOT_LOADED)
    for h in prefix:
        r.tick(1, health=h)
    limit = getattr(r.config, timeout)
    assert r.tick(limit - 1, health=health).event is None
    d = r.tick(1, health=health)
    assert (d.event, r.state.reason) == ("block", reason)


def test_an_unhealthy_serving_canary_is_rolled_back():
    r = Rollout().to_step(2)
    d = r.tick(1, health=replace(HEALTHY, healthy=False, error="replica lost"))
    assert (d.event, r.state.reason) == ("rollback", "canary unhealthy at step 3/5 (25%): replica lost")


def test_pause_holds_the_split_and_resume_restarts_the_hold():
    r = Rollout().to_step(1)
    d = r.tick(10, command=Command.PAUSE)
    assert (d.event, r.state.phase, r.state.paused_from) == ("pause", Phase.PAUSED, Phase.CANARY)
    assert d.weights == pytest.approx({"v1": 0.95, "v2": 0.05})
    assert r.tick(600).event is None and r.state.step_index == 1  # no advance while paused
    assert r.tick(1, command=Command.PAUSE).notes == ("pause ignored: already paused", "paused")
    d = r.tick(1, command=Command.RESUME)
    assert (d.event, r.state.phase, r.state.phase_since) == ("resume", Phase.CANARY, r.clock.now())
    assert r.tick(59).event is None  # the hold starts again at resume
    assert r.tick(1).event == "advance" and r.state.step_index == 2
    assert r.tick(1, command=Command.RESUME).notes[0] == "resume ignored: not paused"


def test_a_breach_while_paused_still_rolls_back():
    r = Rollout().to_step(1)
    r.tick(1, command=Command.PAUSE)
    d = r.tick(1, canary=arm(errors=300))
    assert (d.event, r.state.phase, r.state.paused_from) == ("rollback", Phase.ROLLED_BACK, None)


def test_pause_during_bring_up_stops_the_timeout():
    r = Rollout()
    r.tick(health=NOT_LOADED)
    r.tick(1, command=Command.PAUSE, health=NOT_LOADED)
    assert r.tick(10_000, health=NOT_LOADED).event is None and r.state.phase is Phase.PAUSED
    assert r.last.weights == {"v1": 1.0}
    assert r.tick(1, command=Command.RESUME, health=NOT_LOADED).state.phase is Phase.LOADING
    assert r.tick(299, health=NOT_LOADED).event is None  # a fresh load timeout from resume
    assert r.tick(1, health=NOT_LOADED).event == "block"


def test_promote_command_only_while_the_canary_serves():
    r = Rollout()
    r.tick(health=NOT_LOADED)
    d = r.tick(1, command=Command.PROMOTE, health=LOADED)
    assert d.notes[0] == "promote refused: the canary is not serving yet (loading)"
    assert d.event == "warm"  # the call still evaluated the loading phase
    r = Rollout().to_step(1)
    d = r.tick(1, command=Command.PROMOTE, canary=arm(requests=3))
    assert (d.event, r.state.phase, d.weights) == ("promote", Phase.PROMOTED, {"v2": 1.0})
    assert r.state.reason == "operator promote at step 2/5 (5%)"
    r = Rollout().to_step(1)
    r.tick(1, command=Command.PAUSE)
    assert r.tick(1, command=Command.PROMOTE).event == "promote"  # also from a paused canary


@pytest.mark.parametrize("steps_in", [0, 1, 2])
def test_rollback_command_from_any_phase(steps_in):
    r = Rollout()
    for h in (NOT_LOADED, LOADED, WARMED)[:steps_in + 1]:
        r.tick(1, health=h)
    d = r.tick(1, command=Command.ROLLBACK)
    assert (d.event, r.state.phase, r.state.reason, d.weights) == ("rollback", Phase.ROLLED_BACK, "operator rollback",
                                                                   {"v1": 1.0})


def test_a_finished_rollout_ignores_commands_and_metrics():
    r = Rollout().to_step(2)
    r.tick(1, command=Command.ROLLBACK)
    for cmd in (None, Command.RESUME, Command.PROMOTE):
        d = r.tick(600, command=cmd, canary=arm(errors=900))
        assert (d.event, r.state.phase, d.weights) == (None, Phase.ROLLED_BACK, {"v1": 1.0})
    assert d.notes == ("command promote ignored: rollout is rolled_back",)


def test_state_round_trips_through_json_in_every_phase():
    seen = {}
    r = Rollout()
    for h in (NOT_LOADED, LOADED, WARMED, HEALTHY):
        seen[r.state.phase] = r.state
        r.tick(1, health=h)
    r.tick(60, stable=arm(histograms={"first_token": (1, 2, 3)}))  # step 2: baseline with histograms
    seen[Phase.CANARY] = r.state
    r.tick(1, command=Command.PAUSE)
    seen[Phase.PAUSED] = r.state
    r.tick(1, command=Command.ROLLBACK)
    seen[Phase.ROLLED_BACK] = r.state
    assert seen[Phase.CANARY].baseline == arm(histograms={"first_token": (1, 2, 3)})
    for phase, state in seen.items():
        assert RolloutState.from_json(state.to_json()) == state, phase


def test_a_restored_state_decides_exactly_as_the_original():
    r = Rollout().to_step(3)
    restored = RolloutState.from_json(r.state.to_json())
    now = r.clock.now() + 60
    snap = make_snapshot(stable=arm(requests=0), canary=arm(requests=400))
    assert decide(snap, restored, now, r.config) == decide(snap, r.state, now, r.config)


def test_state_invariants():
    with pytest.raises(ValueError, match="differ"):
        RolloutState(model="m", stable_version="v1", canary_version="v1")
    with pytest.raises(ValueError, match="paused_from"):
        RolloutState(model="m", stable_version="v1", canary_version="v2", phase=Phase.PAUSED)
    with pytest.raises(ValueError, match="step_index"):
        RolloutState(model="m", stable_version="v1", canary_version="v2", phase=Phase.CANARY)
    assert RolloutState(model="m", stable_version="v1", canary_version="v2").experiment_id == "m:v2"
    with pytest.raises(ValueError, match="errors"):
        ArmWindow(requests=1, errors=2)
