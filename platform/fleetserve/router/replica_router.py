"""A Ray Serve ``RequestRouter`` choosing model replicas on live engine stats.

Serve calls :meth:`FleetReplicaRouter.choose_replicas` for each request; the stats each
candidate last pushed (``record_routing_stats``, converted to :class:`ReplicaStats` here, at
the Serve boundary) plus Serve's live in-flight count go to
:func:`fleetserve.router.replica_policy.rank`, the same ranking the ingress's link routing uses. Each returned
rank holds ONE replica so Serve tries them in our order (within a rank Serve would re-sort by
its own queue length). The ingress passes the prefix-affinity key as the ``prefix_key``
keyword argument of ``ModelReplica.generate``.

Attach with ``request_router_config=RequestRouterConfig(request_router_class=FleetReplicaRouter)``.
"""

from __future__ import annotations

import random
from typing import List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from fleetserve.deployments.replica_control import TARGET_REPLICA_KWARG  # pins a call to one replica
from fleetserve.deployments.replica_stats import ReplicaStats
from fleetserve.router.replica_policy import rank
from fleetserve.router.stats_board import from_routing_stats, process_board

PREFIX_KEY_KWARG = "prefix_key"


class FleetReplicaRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, even_load_slack: float = 2, seed: Optional[int] = None, **_ignored):
        self._slack = even_load_slack
        self._rng = random.Random(seed)

    def _ensure_state(self) -> None:
        if not hasattr(self, "_rng"):  # initialize_state is optional for Serve
            self.initialize_state()

    def update_replicas(self, replicas: List[RunningReplica]):
        super().update_replicas(replicas)
        self._publish()

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        self._ensure_state()
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        target = pending_request.kwargs.get(TARGET_REPLICA_KWARG) if pending_request is not None else None
        if target in by_id:  # a call meant for one replica (fleet preemption)
            return [[by_id[target]]]
        stats = [ReplicaStats.from_dict(rid, r.routing_stats) for rid, r in by_id.items()]
        ongoing = {rid: self._ongoing(r) for rid, r in by_id.items()}
        key = pending_request.kwargs.get(PREFIX_KEY_KWARG) if pending_request is not None else None
        order = rank(stats, ongoing, key, self._rng, self._slack)
        self._publish()
        return [[by_id[rid]] for rid in order]

    def _ongoing(self, r: RunningReplica):
        return self._replica_queue_len_cache.get(r.replica_id) if self._use_replica_queue_len_cache else None

    def _publish(self) -> None:
        process_board().publish(
            self._deployment_id.name,
            from_routing_stats({rid.unique_id: r.routing_stats for rid, r in self._replicas.items()}),
        )
