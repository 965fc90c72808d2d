"""Controllers the simulator compares: fleetserve's policy, Ray Serve's default policy,
and static peak provisioning. Each observes the fleet and acts once per tick."""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, Optional, Tuple

from fleetserve.autoscaler.config import ModelPolicyConfig
from fleetserve.autoscaler.decision import ReplicaRole, ScalingDecision
from fleetserve.autoscaler.policy import PolicyState
from fleetserve.autoscaler.registry import make_policy
from fleetserve.autoscaler.snapshot import (
    CapacityType,
    InterruptionNotice,
    ModelSnapshot,
    ReplicaState,
    ReplicaView,
    SpotMarket,
)

MODEL = "llm"


def initial_replicas(sim, target_ongoing: float) -> int:
    """Replicas the opening load needs, so every controller starts warmed up alike."""
    sc = sim.scenario
    rate0 = sc.rate_fn(0.0) if sc.rate_fn else _observed_rate(sc, 0.0, 60.0)
    return max(1, math.ceil(rate0 * expected_service_s(sim, target_ongoing) / target_ongoing))


def expected_service_s(sim, concurrency: float) -> float:
    """Mean request duration at ``concurrency``, from the curve and the trace's mean lengths."""
    return scenario_service_s(sim.scenario, sim.cfg, concurrency)


def scenario_service_s(sc, cfg, concurrency: float) -> float:
    reqs = sc.requests
    if not reqs:
        return 1.0
    k = min(len(reqs), 2000)
    p = sum(r.prompt_tokens for r in reqs[:k]) / k
    o = sum(r.output_tokens for r in reqs[:k]) / k
    return cfg.curve.service_time_s(int(concurrency), int(p), int(o))


def oracle_replica_hours(sc, cfg, target_ongoing: float, window: float = 60.0) -> float:
    """Lower bound: serving replica-hours if capacity tracked demand perfectly, minute by
    minute (``sum ceil(rate_w * service / target) * window``), with no cold starts, no
    hysteresis and no warm pool. Same sizing rule as static peak, applied per window."""
    if not sc.requests:
        return 0.0
    service = scenario_service_s(sc, cfg, target_ongoing)
    counts: Dict[int, int] = {}
    for r in sc.requests:
        w = int(r.arrival // window)
        counts[w] = counts.get(w, 0) + 1
    windows = max(1, math.ceil(sc.duration_s / window))
    total = sum(math.ceil(counts.get(w, 0) / window * service / target_ongoing - 1e-9) for w in range(windows))
    return total * window / 3600.0


def _observed_rate(sc, start: float, window: float) -> float:
    return sum(1 for r in sc.requests if start <= r.arrival < start + window) / window


def peak_rate(sc, window: float = 60.0) -> float:
    """Highest arrival rate over any ``window``-second stretch of the trace."""
    times = [r.arrival for r in sc.requests]
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best / window


class FleetserveController:
    """Runs a registered fleetserve policy and applies its decisions to the fleet."""

    def __init__(self, config: ModelPolicyConfig, name: str = "fleetserve"):
        self.config = config
        self.name = name
        self.policy = make_policy(config)
        self.state = PolicyState()
        self.decisions = 0

    def setup(self, sim) -> None:
        fleet = sim.fleet
        fleet.standby_cost_factor = self.config.warm_pool.cost_factor
        n = initial_replicas(sim, self.config.scaling.target_ongoing_per_replica)
        n = max(self.config.scaling.min_replicas, min(self.config.scaling.max_replicas, n))
        from fleetserve.autoscaler.capacity import place_new_replicas

        for ctype in place_new_replicas(n, 0, 0, self.config.spot, SpotMarket(fleet.spot_available, fleet.spot_price_ratio)):
            fleet.start(ctype, 0.0, ReplicaState.ACTIVE, ready_now=True)
        for _ in range(self.config.warm_pool.target_size(n)):
            fleet.start(self.config.warm_pool.capacity_type, 0.0, ReplicaState.WARM_STANDBY, ready_now=True)

    def snapshot(self, sim, now: float) -> ModelSnapshot:
        fleet = sim.fleet
        views = tuple(
            ReplicaView(r.rid, r.state, r.ctype, len(r.running), _becomes(r))
            for r in sorted(fleet.replicas.values(), key=lambda r: int(r.rid[1:]))
        )
        service = sim.mean_service_time()
        if service is None:
            service = expected_service_s(sim, self.config.scaling.target_ongoing_per_replica)
        return ModelSnapshot(
            model=MODEL,
            queued_at_router=len(fleet.queue),
            running=fleet.running(),
            arrival_rate=sim.arrival_rate(),
            mean_service_time_s=service,
            replicas=views,
            interruptions=tuple(
                InterruptionNotice(rid, d) for rid, d in sorted(fleet.notices.items()) if rid in fleet.replicas
            ),
            spot=SpotMarket(fleet.spot_available, fleet.spot_price_ratio),
        )

    def tick(self, sim, now: float) -> None:
        decision, self.state = self.policy.decide(self.snapshot(sim, now), self.state, now)
        self.apply(sim, decision, now)

    def apply(self, sim, d: ScalingDecision, now: float) -> None:
        fleet = sim.fleet
        self.decisions += not d.is_noop
        for drain in d.drains:
            fleet.drain(drain.replica_id, now, migrate_by=drain.migrate_by, to_pool=drain.return_to_pool)
        for rid in d.activate:
            fleet.activate(rid, now)
        for cs in d.cold_starts:
            becomes = ReplicaState.WARM_STANDBY if cs.role is ReplicaRole.STANDBY else ReplicaState.ACTIVE
            for _ in range(cs.count):
                fleet.start(cs.capacity_type, now, becomes)


def _becomes(r) -> Optional[ReplicaState]:
    if r.state is ReplicaState.DRAINING:
        return ReplicaState.WARM_STANDBY if r.to_pool else None
    return r.becomes


class RayDefaultController:
    """Ray Serve's own ``default_autoscaling_policy``, called with a constructed
    ``AutoscalingContext`` and composed the way Ray's controller composes it
    (cold-start fast path, scaling factors, up/down delays, bounds). Only the clock is
    ours: Ray's delay helper takes ``_now``, which we set to simulated time.

    Metrics as Ray sees them: ongoing requests (running + queued at handles) sampled
    every tick and averaged over ``look_back_period_s``. Scale-down stops replicas the
    Ray way: no new requests, ``graceful_shutdown_s`` for in-flight ones, then killed.
    """

    name = "ray-default"

    def __init__(self, min_replicas: int, max_replicas: int, target_ongoing_requests: float, **overrides: Any):
        from ray.serve.config import AutoscalingConfig

        self.config = AutoscalingConfig(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_ongoing_requests=target_ongoing_requests,
            **overrides,
        )
        self.policy_state: Dict[str, Any] = {}
        self.target = 0
        self._samples: Deque[Tuple[float, float, float]] = deque()

    def setup(self, sim) -> None:
        n = initial_replicas(sim, self.config.target_ongoing_requests)
        self.target = max(self.config.min_replicas, min(self.config.max_replicas, n))
        for _ in range(self.target):
            sim.fleet.start(CapacityType.ON_DEMAND, 0.0, ReplicaState.ACTIVE, ready_now=True)

    def context(self, sim, now: float):
        from ray.serve._private.common import DeploymentID, ReplicaID
        from ray.serve.config import AutoscalingContext

        fleet = sim.fleet
        queued = float(len(fleet.queue))
        self._samples.append((now, fleet.running() + queued, queued))
        while self._samples[0][0] < now - self.config.look_back_period_s:
            self._samples.popleft()
        total = sum(s[1] for s in self._samples) / len(self._samples)
        total_queued = sum(s[2] for s in self._samples) / len(self._samples)
        dep = DeploymentID(name=MODEL, app_name="sim")
        running = [
            ReplicaID(unique_id=r.rid, deployment_id=dep)
            for r in fleet.replicas.values()
            if r.state is ReplicaState.ACTIVE
        ]
        return AutoscalingContext(
            deployment_id=dep,
            deployment_name=MODEL,
            app_name="sim",
            current_num_replicas=len(running),
            target_num_replicas=self.target,
            running_replicas=running,
            total_num_requests=total,
            total_queued_requests=total_queued,
            aggregated_metrics={},
            raw_metrics={},
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=dict(self.policy_state),
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=now,
            config=self.config,
        )

    def decide(self, ctx, now: float) -> int:
        from ray.serve import autoscaling_policy as ray_policy

        # Mirrors ray.serve.autoscaling_policy._apply_autoscaling_config (the wrapper
        # Ray's controller puts around every policy) step by step, passing simulated time.
        cold = ray_policy._get_cold_start_scale_up_replicas(ctx)
        if cold is not None:
            decision = cold
        else:
            desired, _ = ray_policy.default_autoscaling_policy(ctx)
            desired = ray_policy._apply_scaling_factors(desired, ctx.current_num_replicas, ctx.config)
            if ctx.current_num_replicas == 0 and desired > 0:
                decision = desired
            else:
                internal = ray_policy._extract_internal_policy_state(self.policy_state)
                decision, internal = ray_policy._apply_delay_logic(
                    max(0, desired), ctx.target_num_replicas, ctx.config, internal, _now=now
                )
                self.policy_state.update(internal)
        decision = math.ceil(decision)
        return max(self.config.min_replicas, min(self.config.max_replicas, decision))

    def tick(self, sim, now: float) -> None:
        self.target = self.decide(self.context(sim, now), now)
        fleet = sim.fleet
        live = [r for r in fleet.replicas.values() if r.state in (ReplicaState.ACTIVE, ReplicaState.STARTING)]
        if len(live) < self.target:
            for _ in range(self.target - len(live)):
                fleet.start(CapacityType.ON_DEMAND, now, ReplicaState.ACTIVE)
        elif len(live) > self.target:
            # Ray stops replicas that are still starting first, then running ones.
            order = sorted(live, key=lambda r: (r.state is ReplicaState.ACTIVE, len(r.running), -int(r.rid[1:])))
            for r in order[: len(live) - self.target]:
                fleet.drain(r.rid, now, kill_after=sim.cfg.graceful_shutdown_s)


class StaticController:
    """Static peak provisioning: enough replicas for the trace's peak minute, all the time."""

    name = "static-peak"

    def __init__(self, target_ongoing: float, replicas: Optional[int] = None):
        self.target_ongoing = target_ongoing
        self.replicas = replicas

    def setup(self, sim) -> None:
        if self.replicas is None:
            service = expected_service_s(sim, self.target_ongoing)
            self.replicas = max(1, math.ceil(peak_rate(sim.scenario) * service / self.target_ongoing))
        for _ in range(self.replicas):
            sim.fleet.start(CapacityType.ON_DEMAND, 0.0, ReplicaState.ACTIVE, ready_now=True)

    def tick(self, sim, now: float) -> None:
        pass
