"""Seeded random walks through the rollout policy, checking invariants at every call."""

import random

import pytest

from fleetserve.canary.policy import decide
from fleetserve.canary.snapshot import CanaryHealth, Command, RolloutSnapshot
from fleetserve.canary.state import TERMINAL, Phase, RolloutState

from tests.canary.factories import arm, make_config


def rare(rng: random.Random, p: float, value, otherwise=None):
    return value if rng.random() < p else otherwise


def random_snapshot(rng: random.Random) -> RolloutSnapshot:
    """Mostly a healthy rollout, with rare failures, breaches and commands, so walks go deep."""
    health = CanaryHealth(
        loaded=rng.random() < 0.7, checksum_ok=rare(rng, 0.01, False, rare(rng, 0.8, True)),
        warmup_completed=rng.randint(0, 6), healthy=rare(rng, 0.01, False, rare(rng, 0.8, True)),
        error=rare(rng, 0.01, "boom"),
    )
    requests = rng.choice([0, 50, 200, 1000, 1000])
    canary = arm(requests=requests, errors=rare(rng, 0.02, requests // 10, 0), ttft=rare(rng, 0.02, 0.3, 0.2))
    stable = arm(requests=rng.choice([0, 1000, 1000]))
    command = rare(rng, 0.03, rng.choice([Command.PAUSE, Command.RESUME, Command.RESUME, Command.PROMOTE,
                                          Command.ROLLBACK]))
    return RolloutSnapshot(health=health, stable=stable, canary=canary, command=command)


@pytest.mark.parametrize("seed", range(40))
def test_random_walks_keep_the_invariants(seed):
    rng = random.Random(seed)
    config = make_config()
    state = RolloutState(model="m", stable_version="v1", canary_version="v2")
    now = 0.0
    for _ in range(200):
        now += rng.choice([0.0, 1.0, 30.0, 60.0, 400.0])
        before = state
        d = decide(random_snapshot(rng), state, now, config)
        state = d.state
        assert sum(d.weights.values()) == pytest.approx(1.0)
        assert set(d.weights) <= {"v1", "v2"}
        assert RolloutState.from_json(state.to_json()) == state
        if before.phase in TERMINAL:  # terminal phases absorb
            assert state == before and d.event is None
        if state.phase is Phase.BLOCKED and before.phase is not Phase.BLOCKED:  # a blocked version never served
            assert before.serving_phase in (Phase.REGISTERED, Phase.LOADING, Phase.WARMING, Phase.HEALTH_CHECK)
        if before.step_index is not None and state.step_index is not None:  # one step at a time
            assert state.step_index - before.step_index in (0, 1)
        if d.event is None and before.phase not in TERMINAL:
            assert state == before  # holding changes nothing
        if state.phase in TERMINAL:
            assert state.reason
