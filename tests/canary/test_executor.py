"""The rollout executor over real stores (memory; Redis for the restart case), with a fake
deployer and prober and a fake clock: every action it takes on each transition. Traffic goes
through the A/B recorder, the one per-request recorder the guardrails read."""

from __future__ import annotations

from typing import Optional

import pytest

from fleetserve.canary.ab_recorder import ABRecorder
from fleetserve.canary.ab_records import RequestOutcome, ServedRequest
from fleetserve.canary.ab_store import MemoryABStore, RedisABStore
from fleetserve.canary.executor import RolloutExecutor
from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.rollout_metrics import RolloutMetrics
from fleetserve.canary.rollout_store import RolloutSettings, RolloutStore
from fleetserve.canary.snapshot import Command
from fleetserve.canary.state import Phase
from fleetserve.canary.store import MemoryCanaryStore, RedisCanaryStore
from fleetserve.canary.versions import VersionState
from fleetserve.clock import FakeClock
from fleetserve.metrics import names as N
from tests.canary.factories import make_config, make_version

pytestmark = pytest.mark.asyncio


class FakeDeployer:
    def __init__(self):
        self.statuses: dict[str, tuple[str, str]] = {}
        self.deployed: list[str] = []
        self.deleted: list[str] = []

    async def deploy(self, version):
        self.deployed.append(version.version_id)
        self.statuses.setdefault(version.version_id, ("deploying", ""))

    async def status(self, model, version):
        return self.statuses.get(version, ("absent", ""))

    async def delete(self, model, version):
        self.deleted.append(version)
        self.statuses.pop(version, None)


class FakeProber:
    def __init__(self, fail_every: int = 0):
        self.sent, self.fail_every = 0, fail_every

    async def probe(self, model, version) -> Optional[str]:
        self.sent += 1
        return "engine error" if self.fail_every and self.sent % self.fail_every == 0 else None


CONFIG = make_config(steps=[10, 50, 100], step_interval_s=30, min_sample_per_step=20, warmup_requests=3,
                     retire_delay_s=10, registry_refresh_s=2)


async def setup(store=None, prober=None, clock=None, config=CONFIG, ab_store=None):
    store = store or MemoryCanaryStore()
    reg = VersionRegistry(store)
    clock = clock or FakeClock(1000.0)
    deployer = FakeDeployer()
    ab = ABRecorder(ab_store or MemoryABStore())
    ex = RolloutExecutor(config, reg, RolloutStore(store), deployer, prober or FakeProber(), ab, {"m": "v1"}, clock,
                         RolloutMetrics())
    if await reg.get("m", "v1") is None:
        await reg.register(make_version("v1", state=VersionState.STABLE))
        await reg.register(make_version("v2"))
    return ex, reg, deployer, clock


async def traffic(ex: RolloutExecutor, stable: int, canary: int, canary_errors: int = 0, ab: ABRecorder = None):
    """Outcomes recorded by an ingress replica's stage 7 (``ab``: another replica's recorder)."""
    ab = ab or ex.outcomes
    for version, n, errors in (("v1", stable, 0), ("v2", canary, canary_errors)):
        for i in range(n):
            served = ServedRequest(f"{version}-{i}", "acme", "m", version, 1000.0)
            await ab.record(RequestOutcome(served, error=i < errors, ttft_s=0.1, tpots=(0.01,)), "v1")


async def bring_up(ex, reg, deployer, clock):
    await ex.start("m", await reg.require("m", "v2"), RolloutSettings())
    assert (await ex.tick("m")).event == "load"
    await ex.idle()
    assert deployer.deployed == ["v2"] and (await reg.require("m", "v2")).state is VersionState.ROLLING_OUT
    assert await ex.tick("m") is None  # still deploying
    deployer.statuses["v2"] = ("ready", "")
    assert (await ex.tick("m")).event == "warm"
    assert (await ex.tick("m")).event == "health_check"
    rec = await ex.tick("m")
    assert rec.event == "start_canary" and rec.weights == {"v1": 0.9, "v2": 0.1}
    assert await reg.weights("m") == {"v1": 0.9, "v2": pytest.approx(0.1)}


async def test_a_healthy_canary_goes_through_every_step_and_is_promoted():
    ex, reg, deployer, clock = await setup()
    await bring_up(ex, reg, deployer, clock)
    for share in (0.5, 1.0):
        await traffic(ex, 30, 25)
        assert await ex.tick("m") is None  # sample met, hold not over
        clock.advance(31)
        rec = await ex.tick("m")
        assert rec.event == "advance" and rec.verdict["passed"] and rec.canary["requests"] == 25
        assert (await reg.weights("m")).get("v2") == pytest.approx(share)
    # stable serves nobody at 100 %: its last full window is the reference
    await traffic(ex, 0, 25)
    clock.advance(31)
    rec = await ex.tick("m")
    assert rec.event == "promote" and rec.verdict["reference"] == "baseline"
    assert await reg.weights("m") == {"v2": 1.0}
    assert (await reg.require("m", "v2")).state is VersionState.STABLE
    assert (await reg.require("m", "v1")).state is VersionState.RETIRED
    clock.advance(11)
    await ex.tick_all()
    assert deployer.deleted == []  # v1 is the main application's: never deleted here
    assert [r.event for r in await ex.rollouts.decisions("m")] == [
        "start", "load", "warm", "health_check", "start_canary", "advance", "advance", "promote"]
    m = ex.metrics.get(N.ROLLOUT_DECISIONS)
    assert m.labels("m", "v2", "advance")._value.get() == 2
    assert ex.metrics.get(N.ROLLOUT_CANARY_WEIGHT).labels("m", "v2")._value.get() == 1.0


async def test_a_breach_rolls_back_at_once_and_the_deployment_goes_after_the_delay():
    ex, reg, deployer, clock = await setup()
    await bring_up(ex, reg, deployer, clock)
    await traffic(ex, 30, 20, canary_errors=3)
    rec = await ex.tick("m")  # before the hold is over
    assert rec.event == "rollback" and "error_rate canary 0.15" in rec.reason
    assert rec.verdict["checks"][0]["breached"] and rec.canary["errors"] == 3
    assert await reg.weights("m") == {"v1": 1.0}
    assert (await reg.require("m", "v2")).state is VersionState.ROLLED_BACK
    assert ex.metrics.get(N.ROLLOUT_GUARDRAIL_VALUE).labels("m", "v2", "error_rate")._value.get() == 0.15
    await ex.tick_all()
    assert deployer.deleted == []  # ingress replicas may still route to it for registry_refresh_s
    clock.advance(10)
    await ex.tick_all()
    await ex.idle()
    assert deployer.deleted == ["v2"]
    await ex.tick_all()
    await ex.idle()
    assert deployer.deleted == ["v2"]  # once
    assert await ex.tick("m") is None  # finished


async def test_a_checksum_mismatch_blocks_before_any_weight():
    ex, reg, deployer, clock = await setup()
    await ex.start("m", await reg.require("m", "v2"), RolloutSettings())
    await ex.tick("m")
    deployer.statuses["v2"] = ("failed", "checksum mismatch for version m@v2 (changed: model.safetensors)")
    rec = await ex.tick("m")
    assert rec.event == "block" and "checksum mismatch" in rec.reason
    assert await reg.weights("m") == {"v1": 1.0}
    v2 = await reg.require("m", "v2")
    assert v2.state is VersionState.BLOCKED and "checksum mismatch" in v2.blocked_reason
    assert all(r.weights.get("v2", 0) == 0 for r in await ex.rollouts.decisions("m"))


async def test_failing_warm_up_blocks_and_a_flaky_one_passes():
    ex, reg, deployer, clock = await setup(prober=FakeProber(fail_every=2))  # half fail: 3 of 9 attempts do
    await ex.start("m", await reg.require("m", "v2"), RolloutSettings())
    await ex.tick("m")
    deployer.statuses["v2"] = ("ready", "")
    await ex.tick("m")
    assert (await ex.tick("m")).event == "health_check"
    ex2, reg2, d2, _ = await setup(prober=FakeProber(fail_every=1))
    await ex2.start("m", await reg2.require("m", "v2"), RolloutSettings())
    await ex2.tick("m")
    d2.statuses["v2"] = ("ready", "")
    await ex2.tick("m")
    rec = await ex2.tick("m")
    assert rec.event == "block" and "9 of 9 warm-up requests failed" in rec.reason


async def test_commands_pause_resume_promote_and_rollback():
    ex, reg, deployer, clock = await setup()
    await bring_up(ex, reg, deployer, clock)
    await ex.rollouts.put_command("m", Command.PAUSE)
    assert (await ex.tick("m")).event == "pause"
    assert await ex.rollouts.pending_command("m") is None
    await traffic(ex, 30, 25)
    clock.advance(31)
    assert await ex.tick("m") is None  # paused: no advance
    await ex.rollouts.put_command("m", Command.RESUME)
    assert (await ex.tick("m")).event == "resume"
    await ex.rollouts.put_command("m", Command.PROMOTE)
    rec = await ex.tick("m")
    assert rec.event == "promote" and "operator promote" in rec.reason
    with pytest.raises(Exception, match="already the stable"):
        await ex.start("m", await reg.require("m", "v2"), RolloutSettings())


async def test_a_second_rollout_is_refused_while_one_is_live_and_bad_settings_are_a_400():
    ex, reg, deployer, clock = await setup()
    await ex.start("m", await reg.require("m", "v2"), RolloutSettings())
    with pytest.raises(Exception, match="is registered; promote or roll it back"):
        await ex.start("m", await reg.require("m", "v2"), RolloutSettings())
    with pytest.raises(Exception, match="steps") as ei:
        await ex.start("m", await reg.require("m", "v2"), RolloutSettings(steps=(50, 10)))
    assert ei.value.field == "steps"


async def _resume_from_the_same_step(store, ab_store):
    ex, reg, deployer, clock = await setup(store=store, ab_store=ab_store)
    await bring_up(ex, reg, deployer, clock)
    await traffic(ex, 30, 25)
    clock.advance(31)
    assert (await ex.tick("m")).event == "advance"
    await traffic(ex, 10, 10)  # then the ingress dies
    # a new executor (restarted ingress) over the same stores: same step, same window
    ex2, _, deployer2, _ = await setup(store=store, clock=clock, ab_store=ab_store)
    deployer2.statuses["v2"] = ("ready", "")
    state = await ex2.rollouts.state("m")
    assert state.phase is Phase.CANARY and state.step_index == 1
    await traffic(ex2, 20, 15)
    clock.advance(31)
    rec = await ex2.tick("m")
    assert rec.event == "advance" and rec.canary["requests"] == 25  # both replicas' counts add up
    assert deployer2.deployed == []  # it did not redeploy a serving canary


async def test_a_new_executor_resumes_from_the_same_step():
    await _resume_from_the_same_step(MemoryCanaryStore(), MemoryABStore())


@pytest.mark.redis
async def test_a_new_executor_resumes_from_the_same_step_over_redis(redis_url):
    await _resume_from_the_same_step(RedisCanaryStore.from_url(redis_url, timeout_s=2.0),
                                     RedisABStore.from_url(redis_url, timeout_s=2.0))


@pytest.mark.redis
async def test_one_lease_holder_at_a_time_over_redis(redis_url):
    a, b = (RedisCanaryStore.from_url(redis_url, timeout_s=2.0) for _ in range(2))
    assert await a.lease("executor", "a", 0.3)
    assert not await b.lease("executor", "b", 0.3)
    assert await a.lease("executor", "a", 0.3)  # renewed
    import asyncio
    import time

    deadline = time.monotonic() + 5
    while not await b.lease("executor", "b", 5):  # until Redis expires a's lease
        assert time.monotonic() < deadline, "a's lease never expired"
        await asyncio.sleep(0.05)
    assert not await a.lease("executor", "a", 5)


async def test_memory_lease():
    s = MemoryCanaryStore()
    assert await s.lease("x", "a", 60) and not await s.lease("x", "b", 60) and await s.lease("x", "a", 60)
