"""The ingress's :class:`fleetserve.api.model_client.ModelClient` over Ray Serve DeploymentHandles.

With a :class:`ReplicaLinkClient` (``server.replica_transport: direct``) requests stream over
the replica link instead: the replica is chosen here, by the same policy as Serve's router
(:func:`fleetserve.router.replica_policy.choose`) on the stats board plus this process's own
in-flight counts. A replica that advertises no link, or whose link cannot be opened, is
reached through the handle as before; nothing has been sent to it at that point. A link
stream that fails with 503 before its first output (a draining replica the stats board has
not caught up with) is retried once through the handle: no token reached the caller yet.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from typing import AsyncIterator, Optional

from fleetserve.api.model_client import ReplicaStatus
from fleetserve.deployments.replica_link import ReplicaLinkClient
from fleetserve.engine.protocol import GenerateRequest, ModelInfo, RequestOutput
from fleetserve.errors import ModelNotFoundError, ServiceUnavailableError
from fleetserve.router.replica_policy import ReplicaLoad, choose
from fleetserve.router.stats_board import ReplicaStatsBoard, process_board

log = logging.getLogger(__name__)


class HandleModelClient:
    def __init__(self, handles: dict, deployment_names: dict[str, str], board: Optional[ReplicaStatsBoard] = None,
                 link: Optional[ReplicaLinkClient] = None, slack: Optional[dict[str, float]] = None,
                 rng: Optional[random.Random] = None):
        """``handles``: model name -> DeploymentHandle of its ModelReplica deployment;
        ``deployment_names``: model name -> Serve deployment name (key of the stats board);
        ``link``: stream over replica links where replicas advertise one; ``slack``: model
        name -> the routing's ``even_load_slack``."""
        self._handles = handles
        self._streams = {name: h.options(stream=True) for name, h in handles.items()}
        self._deployments = deployment_names
        self._board = board or process_board()
        self._link = link
        self._slack = slack or {}
        self._rng = rng or random.Random()
        self._ongoing: Counter[str] = Counter()  # replica id -> streams this process has open there
        self._link_streams: Counter[str] = Counter()  # replica id -> requests sent over its link (/admin/status)

    def _check(self, model: str) -> None:
        if model not in self._handles:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")
        rows = self._board.replicas(self._deployments[model])
        # None: the router has not reported yet (first request); [] : Serve knows no live replica.
        if rows is not None and not rows:
            raise ServiceUnavailableError(f"no replica of `{model}` is ready", retry_after_s=2.0)

    async def generate(self, model: str, request: GenerateRequest, prefix_key: Optional[str] = None) -> AsyncIterator[RequestOutput]:
        self._check(model)
        target = await self._open_link(model, prefix_key) if self._link is not None else None
        if target is not None:
            replica, link = target
            self._ongoing[replica] += 1
            self._link_streams[replica] += 1
            started = False
            stream = self._link.generate(link, request)
            try:
                async for out in stream:
                    started = True
                    yield out
                return
            except ServiceUnavailableError as exc:
                if started:
                    raise
                # Nothing reached the caller: a replica that is draining (scale-down, rollout)
                # or went away before the stats said so. Serve's router knows; ask it.
                log.info("replica %s refused %s over its link (%s); using the handle", replica, request.request_id, exc)
            finally:
                self._ongoing[replica] -= 1
                await stream.aclose()  # a caller that left early cancels the replica's work now
        gen = self._streams[model].generate.remote(request, prefix_key=prefix_key)
        finished = False
        try:
            async for out in gen:
                finished = out.finished
                yield out
        finally:
            if not finished:
                gen.cancel()  # propagates to the replica, whose generator aborts the engine request

    async def _open_link(self, model: str, prefix_key: Optional[str]):
        """``(replica id, link)`` of the replica to use, or None: use the handle."""
        rows = [e for e in self._board.replicas(self._deployments[model]) or [] if e.stats.get("link")]
        if not rows:
            return None
        by_id = {e.replica: e for e in rows}
        loads = [ReplicaLoad.from_stats(e.replica, e.stats, self._ongoing.get(e.replica, 0)) for e in rows]
        for replica in choose(loads, prefix_key, self._rng, self._slack.get(model, 2)):
            address = by_id[replica].stats["link"]
            try:
                return replica, await self._link.link(address)
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.warning("replica link to %s (%s) failed: %s; trying the next", replica, address, exc)
        return None

    async def model_info(self, model: str) -> ModelInfo:
        self._check(model)
        return await self._handles[model].model_info.remote()

    def replica_status(self) -> list[ReplicaStatus]:
        now = time.time()
        out = []
        for model, dep in self._deployments.items():
            for e in self._board.replicas(dep) or []:
                s = e.stats
                ts = s.get("ts")
                out.append(ReplicaStatus(
                    model=model, replica=e.replica, num_waiting=int(s.get("num_waiting", 0)),
                    num_running=int(s.get("num_running", 0)), kv_usage=float(s.get("kv_usage", 0.0)),
                    healthy=bool(s.get("healthy", True)), draining=bool(s.get("draining", False)),
                    age_s=None if ts is None else max(0.0, now - ts),
                    link=bool(s.get("link")), link_streams=self._link_streams.get(e.replica, 0),
                ))
        return out
