"""The fleetserve autoscaling policy: a pure ``decide(snapshot, state, now)``.

One call plans one model version:

1. *Interruptions*: every replica under a spot notice is treated as gone (its replacement
   is requested at once); it keeps serving until the configured drain point, then drains
   (requests migrated before the deadline). The last one serving keeps serving until
   the deadline is near.
2. *Target*: demand (queues, running, projected arrival rate, KV pressure) over the
   per-replica target, through bounds and hysteresis (fast up, slow down).
3. *Scale up*: wake warm standbys first, cold-start the rest (spot above the on-demand
   base when allowed, on-demand otherwise).
4. *Scale down*: cancel replicas still starting, then drain the least-loaded serving
   ones (on-demand surplus before spot, within the spot share), returning them to the
   warm pool when it is short.
5. *Pool*: size the warm pool as burst headroom (serving + standby >= burst_replicas,
   or a fraction of the serving target, clamped to min/max); cold-start the deficit in
   the background or release the surplus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fleetserve.autoscaler.capacity import place_new_replicas, spot_share_ok, spot_usable
from fleetserve.autoscaler.config import ModelPolicyConfig
from fleetserve.autoscaler.decision import ColdStart, DrainOrder, DrainReason, ReplicaRole, ScalingDecision
from fleetserve.autoscaler.demand import RateTrend, estimate_load
from fleetserve.autoscaler.hysteresis import HysteresisScaler, HysteresisState
from fleetserve.autoscaler.snapshot import CapacityType, ModelSnapshot, ReplicaState, ReplicaView


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between calls (serialisable: see to_dict/from_dict)."""

    hysteresis: HysteresisState = field(default_factory=HysteresisState)
    trend: RateTrend = field(default_factory=RateTrend)

    def to_dict(self) -> Dict[str, Any]:
        h = self.hysteresis
        return {
            "above_since": h.above_since,
            "below_since": h.below_since,
            "last_scale_down_at": h.last_scale_down_at,
            "trend": [list(s) for s in self.trend.samples],
        }

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "PolicyState":
        if not d:
            return cls()
        return cls(
            hysteresis=HysteresisState(d.get("above_since"), d.get("below_since"), d.get("last_scale_down_at")),
            trend=RateTrend(tuple((float(t), float(r)) for t, r in d.get("trend", []))),
        )


@dataclass
class _Plan:
    """Mutable scratch for one decide() call; frozen into a ScalingDecision at the end."""

    activate: List[str] = field(default_factory=list)
    cold: List[ColdStart] = field(default_factory=list)
    drains: List[DrainOrder] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


class FleetservePolicy:
    """Queue- and rate-driven scaling with warm pool and spot handling for one model."""

    name = "fleetserve"

    def __init__(self, config: ModelPolicyConfig):
        self.config = config
        self.scaler = HysteresisScaler(config.scaling)

    def decide(self, snap: ModelSnapshot, state: PolicyState, now: float) -> Tuple[ScalingDecision, PolicyState]:
        cfg = self.config
        plan = _Plan()
        trend = state.trend.observe(
            now, snap.arrival_rate, cfg.scaling.trend_window_s, cfg.scaling.trend_sample_interval_s
        )
        doomed = {n.replica_id: n for n in snap.interruptions}
        serving = [r for r in snap.replicas if r.will_serve and r.replica_id not in doomed]
        self._plan_interruptions(snap, doomed, serving, now, plan)

        load = estimate_load(snap, trend, cfg.scaling)
        wanted = math.ceil(load / cfg.scaling.target_ongoing_per_replica - 1e-9)
        capacity = len(serving) * cfg.scaling.target_ongoing_per_replica
        if len(serving) < wanted and serving and load <= capacity * (1 + cfg.scaling.upscale_tolerance):
            wanted = len(serving)  # within tolerance of the current fleet
        active = [r for r in serving if r.state is ReplicaState.ACTIVE]
        if snap.kv_usage is not None and snap.kv_usage >= cfg.scaling.kv_high_watermark:
            wanted = max(wanted, len(active) + 1)
            plan.notes.append(f"kv usage {snap.kv_usage:.2f} above watermark")
        if snap.has_traffic:
            wanted = max(wanted, 1)
        target, hyst = self.scaler.apply(len(serving), wanted, state.hysteresis, now)

        standbys = [r for r in snap.replicas if r.state is ReplicaState.WARM_STANDBY and r.replica_id not in doomed]
        pool_target = cfg.warm_pool.target_size(target)
        if target > len(serving):
            self._plan_scale_up(snap, serving, standbys, target - len(serving), plan)
        elif target < len(serving):
            pool_short = pool_target - len(standbys) - len(_draining_to_pool(snap, doomed))
            self._plan_scale_down(snap, serving, len(serving) - target, pool_short, plan)
        self._plan_pool(snap, doomed, standbys, pool_target, plan)

        decision = ScalingDecision(
            model=snap.model,
            version=snap.version,
            target_replicas=target,
            activate=tuple(plan.activate),
            cold_starts=tuple(_merge(plan.cold)),
            drains=tuple(plan.drains),
            notes=tuple(plan.notes),
        )
        return decision, PolicyState(hysteresis=hyst, trend=trend)

    # -- phases ---------------------------------------------------------------------

    def _plan_interruptions(self, snap, doomed, serving, now, plan: _Plan) -> None:
        margin = self.config.spot.migration_margin_s
        drain_before = self.config.spot.drain_before_deadline_s
        others_active = any(r.state is ReplicaState.ACTIVE for r in serving)
        for rid, notice in sorted(doomed.items()):
            replica = snap.replica(rid)
            if replica is None:
                continue
            migrate_by = max(now, notice.deadline - margin)
            if replica.state is ReplicaState.DRAINING:
                # Already draining (e.g. scale-down): make sure its requests migrate in time.
                plan.drains.append(DrainOrder(rid, DrainReason.SPOT_INTERRUPTION, migrate_by=migrate_by))
                continue
            if replica.state is ReplicaState.WARM_STANDBY:
                continue  # handled by the refill phase
            last_one = replica.state is ReplicaState.ACTIVE and not others_active
            # Keep the last serving replica up until a replacement serves or time runs out:
            # draining it early would turn a notice into an outage.
            if last_one and now < notice.deadline - 2 * margin:
                plan.notes.append(f"{rid}: interruption notice, kept serving until a replacement is up")
                continue
            # It already counts as gone (its replacement is on the way); until the drain point
            # its slots still serve, which bridges most of the replacement's cold start.
            if drain_before is not None and now < notice.deadline - drain_before:
                plan.notes.append(f"{rid}: interruption notice, serving until {notice.deadline - drain_before:.0f}s")
                continue
            plan.drains.append(DrainOrder(rid, DrainReason.SPOT_INTERRUPTION, migrate_by=migrate_by))
            plan.notes.append(f"{rid}: interruption notice, draining and migrating before {notice.deadline:.0f}s")

    def _plan_scale_up(self, snap, serving, standbys, need: int, plan: _Plan) -> None:
        # Standbys first: seconds to wake instead of minutes to load.
        for r in sorted(standbys, key=lambda r: r.replica_id)[:need]:
            plan.activate.append(r.replica_id)
        woken = [r for r in standbys if r.replica_id in set(plan.activate)]
        rest = need - len(woken)
        if woken:
            plan.notes.append(f"scale up: wake {len(woken)} standby")
        if rest <= 0:
            return
        on_demand = sum(1 for r in serving + woken if r.capacity_type is CapacityType.ON_DEMAND)
        spot = sum(1 for r in serving + woken if r.capacity_type is CapacityType.SPOT)
        types = place_new_replicas(rest, on_demand, spot, self.config.spot, snap.spot)
        for t in types:
            plan.cold.append(ColdStart(1, t, ReplicaRole.SERVING))
        if self.config.spot.enabled and not spot_usable(self.config.spot, snap.spot):
            plan.notes.append("spot unavailable or over the price ceiling: on-demand fallback")
        plan.notes.append(f"scale up: cold-start {rest}")

    def _plan_scale_down(self, snap, serving, excess: int, pool_short: int, plan: _Plan) -> None:
        # Replicas still loading cost money and serve nobody yet: cancel those first.
        starting = sorted(
            (r for r in serving if r.state is ReplicaState.STARTING), key=lambda r: r.replica_id, reverse=True
        )
        victims: List[ReplicaView] = starting[:excess]
        active = [r for r in serving if r.state is ReplicaState.ACTIVE]
        keep = list(serving)
        for v in victims:
            keep.remove(v)
        while len(victims) < excess:
            v = self._pick_victim(active, keep, snap)
            if v is None:
                break
            victims.append(v)
            keep.remove(v)
            active.remove(v)
        # ``pool_short`` counts only loaded standbys: a drained replica back in the pool is
        # ready in seconds, so it beats a refill still loading (which _plan_pool cancels).
        for v in victims:
            to_pool = (
                pool_short > 0
                and v.state is ReplicaState.ACTIVE
                and v.capacity_type is self.config.warm_pool.capacity_type
            )
            pool_short -= int(to_pool)
            plan.drains.append(DrainOrder(v.replica_id, DrainReason.SCALE_DOWN, return_to_pool=to_pool))
        if victims:
            plan.notes.append(f"scale down: drain {len(victims)}")

    def _pick_victim(self, active, keep, snap) -> Optional[ReplicaView]:
        keep_active = [r for r in keep if r.state is ReplicaState.ACTIVE]
        if len(keep_active) <= 1 and snap.has_traffic:
            return None  # never drain the last replica serving traffic
        spot_cfg = self.config.spot
        on_demand = sum(1 for r in keep if r.capacity_type is CapacityType.ON_DEMAND)
        spot = len(keep) - on_demand

        def tier(r: ReplicaView) -> int:
            # On-demand surplus costs most, so it goes first; then spot; the base last.
            if r.capacity_type is CapacityType.SPOT:
                return 1
            return 0 if on_demand > spot_cfg.on_demand_base else 2

        def allowed(r: ReplicaView) -> bool:
            # Removing spot only lowers the spot share; removing on-demand may break it.
            return r.capacity_type is CapacityType.SPOT or spot_share_ok(on_demand - 1, spot, spot_cfg)

        for r in sorted(keep_active, key=lambda r: (tier(r), r.running, r.replica_id)):
            if allowed(r):
                return r
        return None

    def _plan_pool(self, snap, doomed, standbys, pool_target: int, plan: _Plan) -> None:
        """Bring loaded + loading standbys to ``pool_target``: cold-start the deficit, or
        release the surplus (loading ones first: they cost full price and serve nobody)."""
        for r in snap.replicas:
            if r.replica_id in doomed and r.state is ReplicaState.WARM_STANDBY:
                plan.drains.append(DrainOrder(r.replica_id, DrainReason.SPOT_INTERRUPTION))
        woken = set(plan.activate)
        ready = [r for r in standbys if r.replica_id not in woken]
        pending = [
            r for r in snap.replicas
            if r.state is ReplicaState.STARTING and r.becomes is ReplicaState.WARM_STANDBY and r.replica_id not in doomed
        ]
        # Returning now (this plan) or still draining back from an earlier one: counting
        # only this plan's returns would cold-start a refill for every replica in transit.
        returning = sum(1 for d in plan.drains if d.return_to_pool) + len(_draining_to_pool(snap, doomed))
        have = len(ready) + len(pending) + returning
        if have < pool_target:
            ctype = self.config.warm_pool.capacity_type
            if ctype is CapacityType.SPOT and not spot_usable(self.config.spot, snap.spot):
                ctype = CapacityType.ON_DEMAND
            plan.cold.append(ColdStart(pool_target - have, ctype, ReplicaRole.STANDBY))
            plan.notes.append(f"refill warm pool: {pool_target - have}")
            return
        surplus = have - pool_target
        newest_first = sorted(pending, key=_id_order, reverse=True) + sorted(ready, key=_id_order, reverse=True)
        for r in newest_first[:surplus]:
            plan.drains.append(DrainOrder(r.replica_id, DrainReason.SCALE_DOWN))
        if surplus > 0:
            plan.notes.append(f"shrink warm pool: release {min(surplus, len(newest_first))}")


def _draining_to_pool(snap: ModelSnapshot, doomed) -> List[ReplicaView]:
    """Replicas draining back into the warm pool (a notice cancels the return)."""
    return [
        r for r in snap.replicas
        if r.state is ReplicaState.DRAINING and r.becomes is ReplicaState.WARM_STANDBY and r.replica_id not in doomed
    ]


def _id_order(r: ReplicaView) -> Tuple[int, str]:
    """Ids like ``r9`` < ``r10``: shorter ids first, so numbered ids sort by number."""
    return len(r.replica_id), r.replica_id


def _merge(cold: List[ColdStart]) -> List[ColdStart]:
    """One ColdStart per (role, capacity type), in first-seen order."""
    merged: Dict[Tuple[ReplicaRole, CapacityType], int] = {}
    for c in cold:
        merged[(c.role, c.capacity_type)] = merged.get((c.role, c.capacity_type), 0) + c.count
    return [ColdStart(n, ct, role) for (role, ct), n in merged.items() if n > 0]


def decide(
    snapshot: ModelSnapshot, state: Optional[PolicyState], now: float, config: Optional[ModelPolicyConfig] = None
) -> Tuple[ScalingDecision, PolicyState]:
    """Functional form: ``decide(snapshot, state, now) -> (decision, state)``."""
    return FleetservePolicy(config or ModelPolicyConfig()).decide(snapshot, state or PolicyState(), now)
