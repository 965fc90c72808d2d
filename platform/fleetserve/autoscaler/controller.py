"""The scaling controller: observe each fleet, call the pure policy, apply its whole decision.

One ``tick()`` per fleet (model version):

1. *Observe* through the :class:`FleetActuator`; replicas seen for the first time take the
   role of the oldest cold start waiting for them (a warm-pool refill is parked at once).
2. *Finish drains*: a draining replica that is empty (or past ``drain_timeout_s``) is parked
   into the warm pool or stopped, as its drain order said.
3. *Decide*: build the :class:`ModelSnapshot` from what was observed plus what the controller
   itself set in motion (cold starts not yet arrived, drains in progress), and call
   ``policy.decide(snapshot, state, now)``.
4. *Apply*: wake standbys, cold-start, drain (the replica chosen for removal stops admitting
   first and is removed only once empty), release surplus standbys.

Roles are the controller's belief, not the replicas' last stats push: a replica it parked a
moment ago is a standby even before its stats say so. Everything the controller remembers
lives in :class:`FleetState`, dumped to the store after each tick and reloaded by ``load()``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Callable, Dict, Iterable, List, Mapping, Optional

from fleetserve.autoscaler.actuator import FleetActuator, FleetId, ObservedFleet
from fleetserve.autoscaler.config import AutoscalerConfig, ModelPolicyConfig
from fleetserve.autoscaler.controller_state import TABLE, DrainPlan, FleetState, PendingStart, ScaleOverride
from fleetserve.autoscaler.decision import DrainOrder, ReplicaRole, ScalingDecision
from fleetserve.autoscaler.node_drains import NodeDrain, NodeDrainSource, interruptions_on_draining_nodes
from fleetserve.autoscaler.policy import PolicyState
from fleetserve.autoscaler.registry import make_policy
from fleetserve.autoscaler.snapshot import CapacityType, ModelSnapshot, ReplicaState, ReplicaView
from fleetserve.autoscaler.version_split import FleetCatalog, weighted_demand
from fleetserve.clock import Clock

log = logging.getLogger(__name__)

SERVING, STANDBY = "serving", "standby"


class ScalingController:
    """Applies the policy's decisions to fleets through an actuator. ``store``: a
    :class:`fleetserve.canary.store.CanaryStore`-shaped table store (memory or Redis)."""

    def __init__(self, config: AutoscalerConfig, fleets: Iterable[FleetId], actuator: FleetActuator, clock: Clock,
                 store, observer: Optional[Callable[[FleetId, ObservedFleet, ScalingDecision, FleetState], None]] = None,
                 start_timeout_s: float = 900.0, drain_timeout_s: float = 60.0,
                 node_drains: Optional[NodeDrainSource] = None, wall_clock: Callable[[], float] = time.time,
                 catalog: Optional[FleetCatalog] = None):
        """``node_drains``: the nodes Ray is draining (read once per tick; their replicas get
        interruption notices); ``wall_clock`` dates those drains' deadlines; ``catalog``: the
        model versions to plan for and their traffic weights (read once per tick; None:
        ``fleets`` only, no split)."""
        self.config = config
        self.fleets = list(fleets)
        self.actuator = actuator
        self.clock = clock
        self.store = store
        self.observer = observer
        self.start_timeout_s = start_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.node_drains = node_drains
        self.wall_clock = wall_clock
        self.catalog = catalog
        self.states: Dict[str, FleetState] = {f.key: FleetState() for f in self.fleets}
        self._types: Dict[str, Dict[str, CapacityType]] = {}  # fleet -> replica -> capacity type, last tick

    # -- persistence -------------------------------------------------------------------

    async def load(self) -> None:
        """Reload every fleet's state from the store (after a restart)."""
        for f in self.fleets:
            self.states[f.key] = FleetState.from_json(await self.store.get(TABLE, f.key))

    async def _save(self, f: FleetId) -> None:
        await self.store.put(TABLE, f.key, self.states[f.key].to_json())

    # -- operator input ----------------------------------------------------------------

    async def set_override(self, f: FleetId, override: ScaleOverride) -> None:
        if f.key not in self.states:
            self.fleets.append(f)
            self.states[f.key] = FleetState()
        self.states[f.key].override = override
        await self._save(f)

    def policy_config(self, f: FleetId) -> ModelPolicyConfig:
        cfg = self.config.for_model(f.model)
        o = self.states[f.key].override
        scaling = {k: v for k, v in (("min_replicas", o.min_replicas), ("max_replicas", o.max_replicas)) if v is not None}
        if scaling:
            cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update=scaling)})
        if o.warm is not None:
            pool = cfg.warm_pool.model_copy(update={"min_size": o.warm, "max_size": o.warm, "burst_replicas": 0})
            cfg = cfg.model_copy(update={"warm_pool": pool})
        return cfg

    # -- the loop body -----------------------------------------------------------------

    async def tick(self) -> Dict[str, ScalingDecision]:
        out = {}
        drains = self._node_drains()
        weights = await self._sync_fleets()
        observed = {f: await self.actuator.observe(f) for f in list(self.fleets)}
        extra = weighted_demand({f: o.queued + sum(r.running for r in o.replicas) for f, o in observed.items()}, weights)
        for f, obs in observed.items():
            out[f.key] = await self.tick_fleet(f, drains, obs, extra.get(f, 0))
        return out

    async def _sync_fleets(self) -> Mapping[FleetId, Optional[float]]:
        """Plan for the catalog's versions: new ones start from their stored state (a
        controller restart keeps a canary's memory); removed ones are forgotten (no longer
        ticked or shown; their stored state is dropped unless it holds an operator override,
        which a version coming back picks up again)."""
        if self.catalog is None:
            return {}
        try:
            weights = dict(await self.catalog.fleets())
        except Exception:  # noqa: BLE001 - the registry unreachable for a tick: keep the fleets we have
            log.exception("reading the model versions failed")
            return {}
        for f in weights:
            if f.key not in self.states or f not in self.fleets:
                self.states[f.key] = FleetState.from_json(await self.store.get(TABLE, f.key))
                self.fleets.append(f)
        for f in [f for f in self.fleets if f not in weights]:
            await self._forget(f)
        return weights

    async def _forget(self, f: FleetId) -> None:
        st = self.states.pop(f.key, None)
        self._types.pop(f.key, None)
        self.fleets = [g for g in self.fleets if g != f]
        if st is not None and not any(v is not None for v in vars(st.override).values()):
            await self.store.delete(TABLE, f.key)

    def _node_drains(self) -> Mapping[str, NodeDrain]:
        if self.node_drains is None:
            return {}
        try:
            return self.node_drains.draining_nodes()
        except Exception:  # noqa: BLE001 - the GCS unreachable for a tick: scale on without the notices
            log.exception("reading the draining nodes failed")
            return {}

    async def tick_fleet(self, f: FleetId, drains: Optional[Mapping[str, NodeDrain]] = None,
                         obs: Optional[ObservedFleet] = None, extra_demand: int = 0) -> ScalingDecision:
        """One fleet's tick; ``extra_demand``: requests its traffic weight sends its way that
        it does not carry yet (counted as queued at the router)."""
        now = self.clock.now()
        st = self.states.setdefault(f.key, FleetState())
        obs = obs if obs is not None else await self.actuator.observe(f)
        if drains:
            notices = interruptions_on_draining_nodes(obs.replicas, drains, now, self.wall_clock(),
                                                      self.policy_config(f).spot.migration_margin_s)
            known = {n.replica_id for n in obs.interruptions}
            obs = replace(obs, interruptions=obs.interruptions + tuple(n for n in notices if n.replica_id not in known))
        await self._adopt_new_replicas(f, obs, st, now)
        await self._finish_drains(f, obs, st, now)
        # Stopped by us but still up until Serve acts on the lower count: no longer ours to plan.
        obs = replace(obs, replicas=tuple(r for r in obs.replicas if r.replica_id not in st.stopping))
        snap = self.snapshot(replace(obs, queued=obs.queued + extra_demand), st, now)
        decision, pstate = make_policy(self.policy_config(f)).decide(snap, PolicyState.from_dict(st.policy), now)
        st.policy = pstate.to_dict()
        await self._apply(f, obs, st, decision, now)
        st.last_decision = _decision_record(decision, snap, now)
        if not decision.is_noop:
            log.info("scaling %s: %s", f.key, json.dumps(st.last_decision, sort_keys=True))
        if self.observer is not None:
            self.observer(f, obs, decision, st)
        await self._save(f)
        return decision

    async def _adopt_new_replicas(self, f: FleetId, obs: ObservedFleet, st: FleetState, now: float) -> None:
        seen = {r.replica_id for r in obs.replicas}
        await self._stand_in(f, obs, st, seen)
        st.roles = {rid: role for rid, role in st.roles.items() if rid in seen}
        st.draining = {rid: p for rid, p in st.draining.items() if rid in seen}
        # A stopped replica Serve kept with none of ours gone in its place (_stand_in) is adopted again after a while.
        st.stopping = {rid: t for rid, t in st.stopping.items() if rid in seen and now - t < self.drain_timeout_s}
        st.pending = [p for p in st.pending if now - p.requested_at < self.start_timeout_s]
        for r in sorted(obs.replicas, key=lambda r: r.replica_id):
            if r.replica_id in st.roles or r.replica_id in st.stopping:
                continue
            match = next((p for p in st.pending if p.capacity_type is r.capacity_type), None)
            match = match or (st.pending[0] if st.pending else None)
            role = SERVING if r.state is not ReplicaState.WARM_STANDBY else STANDBY
            if r.state is ReplicaState.DRAINING:
                # Draining but not by us: the replica we removed was kept and Serve stopped
                # another one instead (it picks which). Take it back into service.
                await self.actuator.activate(f, r.replica_id)
            if match is not None:
                st.pending.remove(match)
                if match.role is ReplicaRole.STANDBY and role == SERVING:
                    await self.actuator.park(f, r.replica_id)  # a refill: loaded, now asleep
                    role = STANDBY
            st.roles[r.replica_id] = role

    async def _stand_in(self, f: FleetId, obs: ObservedFleet, st: FleetState, seen: set) -> None:
        """Serve honoured a lower count by stopping another replica than ours (it picks the
        newest one, which is often the standby): the replica we stopped, still up, takes the
        vanished one's role (and its drain, if it was draining) at once. Waiting for
        ``drain_timeout_s`` instead and adopting it as serving made a loop: the pool refilled
        meanwhile, the next scale-down stopped ours again, and Serve again removed the newest,
        the fresh standby. Only within one capacity type: a count is per deployment, and a
        spot replica gone (an interruption) says nothing of the on-demand count we lowered."""
        before = self._types.get(f.key, {})  # capacity type of each replica seen last tick
        self._types[f.key] = {r.replica_id: r.capacity_type for r in obs.replicas}
        vanished = [rid for rid in sorted(st.roles) if rid not in seen and rid not in st.stopping and rid in before]
        for _, rid in sorted((t, rid) for rid, t in st.stopping.items() if rid in seen):
            ctype = obs.replica(rid).capacity_type
            gone = next((g for g in vanished if before[g] is ctype), None)
            if gone is None:
                continue
            vanished.remove(gone)
            role, plan = st.roles[gone], st.draining.pop(gone, None)
            del st.stopping[rid]
            if plan is not None:
                st.draining[rid] = plan  # already empty: finished (parked or stopped) this tick
            elif role == STANDBY:
                await self.actuator.park(f, rid)
            else:
                await self.actuator.activate(f, rid)
            st.roles[rid] = role
            log.info("scaling %s: Serve stopped %s instead of %s; %s takes its place as %s", f.key, gone, rid, rid,
                     "draining" if plan is not None else role)

    async def _finish_drains(self, f: FleetId, obs: ObservedFleet, st: FleetState, now: float) -> None:
        for rid, plan in list(st.draining.items()):
            r = obs.replica(rid)
            if r is None or (r.running > 0 and now - plan.since < self.drain_timeout_s):
                continue
            del st.draining[rid]
            if plan.to_pool:
                await self.actuator.park(f, rid)
                st.roles[rid] = STANDBY
            else:
                await self.actuator.stop(f, rid)
                st.roles.pop(rid, None)
                st.stopping[rid] = now

    def snapshot(self, obs: ObservedFleet, st: FleetState, now: float) -> ModelSnapshot:
        views: List[ReplicaView] = []
        for r in obs.replicas:
            plan = st.draining.get(r.replica_id)
            if plan is not None:
                becomes = ReplicaState.WARM_STANDBY if plan.to_pool else None
                views.append(ReplicaView(r.replica_id, ReplicaState.DRAINING, r.capacity_type, r.running, becomes))
            elif st.roles.get(r.replica_id) == STANDBY:
                views.append(ReplicaView(r.replica_id, ReplicaState.WARM_STANDBY, r.capacity_type))
            else:
                views.append(ReplicaView(r.replica_id, ReplicaState.ACTIVE, r.capacity_type, r.running))
        for i, p in enumerate(st.pending):
            becomes = ReplicaState.WARM_STANDBY if p.role is ReplicaRole.STANDBY else ReplicaState.ACTIVE
            views.append(ReplicaView(f"pending-{i}", ReplicaState.STARTING, p.capacity_type, becomes=becomes))
        active = [v for v in views if v.state is ReplicaState.ACTIVE]
        kv = [r.kv_usage for r in obs.replicas if st.roles.get(r.replica_id) == SERVING]
        return ModelSnapshot(
            model=obs.fleet.model, version=obs.fleet.version, queued_at_router=obs.queued,
            running=sum(v.running for v in active), kv_usage=sum(kv) / len(kv) if kv else None,
            arrival_rate=obs.arrival_rate, replicas=tuple(views), interruptions=obs.interruptions, spot=obs.spot,
        )

    async def _apply(self, f: FleetId, obs: ObservedFleet, st: FleetState, d: ScalingDecision, now: float) -> None:
        for rid in d.activate:
            await self.actuator.activate(f, rid)
            st.roles[rid] = SERVING
        for c in d.cold_starts:
            await self.actuator.start(f, c.capacity_type, c.count)
            st.pending += [PendingStart(c.role, c.capacity_type, now) for _ in range(c.count)]
        for order in d.drains:
            rid = order.replica_id
            if rid.startswith("pending-"):
                # Cancel a cold start still loading: it joins the pool when it arrives (the
                # policy releases pool surplus, so nothing loads for nobody for long).
                i = int(rid.split("-", 1)[1])
                if i < len(st.pending):
                    st.pending[i].role = ReplicaRole.STANDBY
                continue
            if obs.replica(rid) is None:
                continue
            await self._drain(f, st, order, now)

    async def _drain(self, f: FleetId, st: FleetState, order: DrainOrder, now: float) -> None:
        """Stop a standby at once; drain a serving replica (migrating its requests when the
        order has a ``migrate_by``: an interruption), also one already draining for a
        scale-down whose node got a notice since."""
        rid, migrate = order.replica_id, order.migrate_by is not None
        plan = st.draining.get(rid)
        if st.roles.get(rid) == STANDBY and plan is None:
            await self.actuator.stop(f, rid)  # pool surplus (or a doomed standby): nothing in flight
            st.roles.pop(rid, None)
            st.stopping[rid] = now
        elif plan is None:
            await self.actuator.drain(f, rid, migrate)
            st.draining[rid] = DrainPlan(order.return_to_pool and not migrate, now, order.reason.value, migrate)
        elif migrate and not plan.migrate:
            await self.actuator.drain(f, rid, True)
            st.draining[rid] = DrainPlan(False, plan.since, order.reason.value, True)

    def status(self) -> Dict[str, dict]:
        """Per fleet: roles, drains, pending starts, override and the last decision."""
        out = {}
        for key, st in self.states.items():
            out[key] = {
                "serving": sorted(r for r, role in st.roles.items() if role == SERVING and r not in st.draining),
                "standby": sorted(r for r, role in st.roles.items() if role == STANDBY),
                "draining": {rid: {"to_pool": p.to_pool, "reason": p.reason} for rid, p in st.draining.items()},
                "pending": [{"role": p.role.value, "capacity_type": p.capacity_type.value} for p in st.pending],
                "override": {k: v for k, v in vars(st.override).items() if v is not None},
                "last_decision": st.last_decision,
            }
        return out


def _decision_record(d: ScalingDecision, snap: ModelSnapshot, now: float) -> dict:
    """The decision and the inputs it was made from, as logged, stored and shown."""
    return {
        "at": now, "target": d.target_replicas, "activate": list(d.activate),
        "cold_starts": [{"count": c.count, "capacity_type": c.capacity_type.value, "role": c.role.value}
                        for c in d.cold_starts],
        "drains": [{"replica": o.replica_id, "reason": o.reason.value, "to_pool": o.return_to_pool} for o in d.drains],
        "notes": list(d.notes),
        "inputs": {"queued": snap.queued_at_router, "running": snap.running, "kv_usage": snap.kv_usage,
                   "arrival_rate": snap.arrival_rate, "spot_available": snap.spot.available,
                   "replicas": {s.value: sum(1 for r in snap.replicas if r.state is s) for s in ReplicaState}},
    }
