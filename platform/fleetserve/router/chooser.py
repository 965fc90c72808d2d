"""The "choose replica" stage: which replica of a model should serve one engine request.

:class:`ReplicaChooser` reads the replica stats board of this process (published by the Serve
routers of the model deployments, :mod:`fleetserve.router.replica_router`) and ranks the
replicas that advertise a replica link with :func:`fleetserve.router.replica_policy.rank`,
the same ranking Serve's router applies to handle calls, counting the streams this process
already holds open on each (``ongoing``, kept by the stream stage). The result is a
:class:`Route` for the stream stage. It also answers what the ingress shows of replicas
(``/admin/status``, ``/metrics``).
"""

from __future__ import annotations

import random
import time
from typing import Callable, Mapping, Optional, Protocol

from fleetserve.deployments.model_client import LinkTarget, Route
from fleetserve.deployments.replica_stats import ReplicaStatus
from fleetserve.errors import ModelNotFoundError, ServiceUnavailableError
from fleetserve.router.replica_policy import rank_groups
from fleetserve.router.stats_board import ReplicaStatsBoard, process_board


class StreamCounts(Protocol):
    """What the stream stage knows of this process's own streams, per replica id."""

    ongoing: Mapping[str, int]  # open now
    link_streams: Mapping[str, int]  # sent over the replica's link so far

    @property
    def links_enabled(self) -> bool: ...


class RouteChooser(Protocol):
    """The "choose replica" stage as the request path sees it."""

    def check(self, model: str) -> None: ...

    def choose(self, model: str, prefix_key: Optional[str]) -> Route: ...

    def replica_status(self) -> list[ReplicaStatus]: ...


class HandleRoutes:
    """No link routing: every request goes through the Serve handle, whose router ranks the
    replicas (and tests whose client needs no route)."""

    def check(self, model: str) -> None:
        return None

    def choose(self, model: str, prefix_key: Optional[str]) -> Route:
        return Route(model, prefix_key)

    def replica_status(self) -> list[ReplicaStatus]:
        return []


class ReplicaChooser:
    def __init__(self, deployment_names: Mapping[str, str], counts: StreamCounts,
                 board: Optional[ReplicaStatsBoard] = None, slack: Optional[Mapping[str, float]] = None,
                 rng: Optional[random.Random] = None, wall_clock: Callable[[], float] = time.time,
                 resolve: Optional[Callable[[str], Optional[str]]] = None, twins: Optional[Mapping[str, str]] = None):
        """``deployment_names``: model name -> Serve deployment name (key of the stats board);
        ``resolve``: the deployment name of a route name not in it (a model version deployed
        at runtime, ``model@version``; its slack is the model's), or None;
        ``slack``: model name -> the routing's ``even_load_slack``; ``wall_clock`` dates the
        stats' age (replicas stamp them with ``time.time()``); ``twins``: model name -> the
        deployment name of its spot twin (same model version on spot capacity), routed to as
        one pool with the model's own deployment."""
        self._deployments = dict(deployment_names)
        self._counts = counts
        self._board = board or process_board()
        self._slack = dict(slack or {})
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self._resolve = resolve
        self._twins = dict(twins or {})

    def check(self, model: str) -> None:
        """404 for a model this application does not serve, 503 when Serve knows no live replica."""
        if model not in self._deployments and self._resolve is not None:
            dep = self._resolve(model)
            if dep is not None:
                self._deployments[model] = dep
                self._slack.setdefault(model, self._slack.get(model.partition("@")[0], 2))
        if model not in self._deployments:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")
        own = self._board.replicas(self._deployments[model])
        twin = self._board.replicas(self._twins[model]) if model in self._twins else None
        # None: the router has not reported yet (first request); [] : Serve knows no live replica.
        if own is not None and not own and not twin:
            raise ServiceUnavailableError(f"no replica of `{model}` is ready", retry_after_s=2.0)

    def _groups(self, model: str) -> dict[str, list]:
        """Route target (None: the model's own deployment) -> its replicas' stats."""
        deps = {None: self._deployments[model]}
        if model in self._twins:
            deps[self._twins[model]] = self._twins[model]
        return {target: [e.stats for e in self._board.replicas(dep) or []] for target, dep in deps.items()}

    def choose(self, model: str, prefix_key: Optional[str]) -> Route:
        self.check(model)
        groups = self._groups(model)
        linked = {t: [s for s in rows if s.link] for t, rows in groups.items()}
        use_links = self._counts.links_enabled and any(linked.values())
        target, order = rank_groups(linked if use_links else groups, self._counts.ongoing, prefix_key, self._rng,
                                    self._slack.get(model, 2))
        if not use_links:
            return Route(model, prefix_key, target=target)
        address = {s.replica: s.link for rows in linked.values() for s in rows}
        return Route(model, prefix_key, tuple(LinkTarget(rid, address[rid]) for rid in order), target=target)

    def replica_status(self) -> list[ReplicaStatus]:
        now = self._wall_clock()
        out = []
        deps = [(m, d, None) for m, d in self._deployments.items()] + [(m, d, d) for m, d in self._twins.items()]
        for model, dep, target in deps:
            for e in self._board.replicas(dep) or []:
                s = e.stats
                out.append(ReplicaStatus(
                    model=model, replica=e.replica, num_waiting=s.num_waiting, num_running=s.num_running,
                    kv_usage=s.kv_usage, healthy=s.healthy, draining=s.draining,
                    age_s=None if s.ts is None else max(0.0, now - s.ts),
                    link=s.link is not None, link_streams=self._counts.link_streams.get(e.replica, 0),
                    node_id=s.node_id, node_ip=s.node_ip, standby=s.standby, capacity_type=s.capacity_type,
                    in_flight=s.in_flight,
                    metrics=s.metrics, link_address=s.link, target=target,
                ))
        return out
