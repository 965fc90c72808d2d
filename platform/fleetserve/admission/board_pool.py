"""A :class:`ReplicaPool` over the per-process replica stats board (``router/stats_board.py``).

The serving layer's replica router publishes every replica's latest stats (waiting,
running, KV usage, health, draining) to a board in the ingress process; the fleet
scheduler reads capacity from it without any extra RPC.

Preemption needs a way to reach the replica that runs a request; it is injected
(``preempt``). Without one, ``preempt`` answers False and the scheduler falls back to
strict priority at dispatch plus the engines' own priority scheduling.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Mapping, Optional

from fleetserve.admission.policy import ReplicaCapacity
from fleetserve.router.stats_board import BoardEntry, ReplicaStatsBoard, process_board

PreemptFn = Callable[[Optional[str], str], Awaitable[bool]]

# Until the router has seen the deployment once, capacity is unknown; one unloaded pseudo
# replica lets the first requests through (Serve's router still places them) instead of
# queueing them until their deadline.
UNKNOWN_REPLICA = "unknown"


VERSION_SEPARATOR = "--"  # a runtime version's deployment: ``<stable deployment>--<version>`` (versions.py)
VERSION_ROWS_MAX_AGE_S = 30.0


def model_rows(board: ReplicaStatsBoard, deployments: list[str], max_age_s: float = VERSION_ROWS_MAX_AGE_S,
               now: Optional[float] = None, exclude: frozenset = frozenset()) -> dict[str, Optional[list[BoardEntry]]]:
    """Deployment -> its board rows (None: not reported yet): ``deployments`` (a model's own
    and its spot twin), then each runtime version's (``<deployment>--<version>``,
    ``ServeVersionDeployer.deployment``), which the router sends the model's requests to by
    the version split as well. Without the versions, a canary's or an A/B arm's replicas were
    no admission capacity. Left out: a version whose rows are ``max_age_s`` older than the
    freshest of the model's own (its application deleted: a live replica's stats change every
    push, so its rows are republished with the others; measured against the model's own rows,
    not the clock, because the cluster queue actor gets rows only with pushes), and any in
    ``exclude`` (other models' deployments whose names only look like a version's)."""
    rows = {d: board.replicas(d) for d in deployments}
    if now is None:
        fresh = [e.seen_at for entries in rows.values() for e in entries or []]
        now = max(fresh) if fresh else time.time()
    prefixes = tuple(d + VERSION_SEPARATOR for d in deployments)
    for d in board.deployments():
        if d in rows or d in exclude or not d.startswith(prefixes):
            continue
        entries = board.replicas(d)
        if any(now - e.seen_at <= max_age_s for e in entries or []):
            rows[d] = entries
    return rows


def with_versions(board: ReplicaStatsBoard, deployments: list[str], max_age_s: float = VERSION_ROWS_MAX_AGE_S,
                  now: Optional[float] = None, exclude: frozenset = frozenset()) -> list[str]:
    """The names :func:`model_rows` counts, in its order."""
    return list(model_rows(board, deployments, max_age_s, now, exclude))


class BoardReplicaPool:
    """Capacity of one model's replicas (its deployment, spot twin and runtime versions), as
    last published on the stats board."""

    def __init__(self, deployment: str, board: Optional[ReplicaStatsBoard] = None, preempt: Optional[PreemptFn] = None,
                 twin: Optional[str] = None, exclude: frozenset = frozenset()) -> None:
        """``twin``: the deployment of the same model version on spot capacity, whose replicas
        count as capacity too (the router sends requests to both); ``exclude``: the other
        models' deployments (never counted as this model's versions)."""
        self._deployment = deployment
        self._board = board or process_board()
        self._preempt = preempt
        self._twin = twin
        self._exclude = exclude

    def capacity_snapshot(self) -> tuple[ReplicaCapacity, ...]:
        own = [self._deployment] + ([self._twin] if self._twin is not None else [])
        reported = list(model_rows(self._board, own, exclude=self._exclude).values())
        if all(r is None for r in reported):
            return (ReplicaCapacity(UNKNOWN_REPLICA),)
        rows = [e for r in reported for e in r or []]
        return tuple(
            ReplicaCapacity(replica_id=e.replica, num_running=e.stats.num_running, num_waiting=e.stats.num_waiting,
                            kv_usage=e.stats.kv_usage, healthy=e.stats.healthy, accepting=e.stats.accepting)
            for e in rows
        )

    async def preempt(self, replica_id: Optional[str], request_id: str) -> bool:
        if self._preempt is None:
            return False
        return await self._preempt(replica_id, request_id)


def handle_preempt(handle, deployment: str, board: Optional[ReplicaStatsBoard] = None) -> PreemptFn:
    """Preempt through a Serve DeploymentHandle of ``ModelReplica``.

    Serve's router places requests itself, so the scheduler's replica hint may be wrong:
    the call goes to every replica on the board (pinned with ``target_replica``, which the
    replica router honours) and succeeds if any of them held the job. Preemptions are rare
    and replicas few, so the fan-out is cheap.
    """
    board = board or process_board()

    async def preempt(replica_id: Optional[str], request_id: str) -> bool:
        rows = board.replicas(deployment) or []
        targets = [e.replica for e in rows] or [None]
        if replica_id in targets:  # try the likely replica first
            targets.remove(replica_id)
            targets.insert(0, replica_id)
        for target in targets:
            kwargs = {"target_replica": target} if target is not None else {}
            if await handle.preempt_job.remote(request_id, **kwargs):
                return True
        return False

    return preempt


def board_pools(
    deployment_names: Mapping[str, str], handles: Optional[Mapping[str, object]] = None, board: Optional[ReplicaStatsBoard] = None,
    twins: Optional[Mapping[str, str]] = None,
) -> dict[str, BoardReplicaPool]:
    """Model name -> pool, for ``TenantGatekeeper(pool=...)``; with ``handles``, preemption works too
    (on the model's own deployment); ``twins``: model name -> its spot twin's deployment."""
    handles, twins = handles or {}, twins or {}
    configured = frozenset(deployment_names.values()) | frozenset(twins.values())
    return {
        model: BoardReplicaPool(dep, board, handle_preempt(handles[model], dep, board) if model in handles else None,
                                twin=twins.get(model), exclude=configured - {dep, twins.get(model)})
        for model, dep in deployment_names.items()
    }
