"""The "stream" stage on Ray Serve: :class:`HandleModelClient` carries a :class:`Route` to a replica.

With a :class:`ReplicaLinkClient` (``server.replica_transport: direct``) the request streams
over the first replica link of the route that opens; the router ranked them
(:mod:`fleetserve.router.chooser`). A route with no link, or whose links all fail to open,
goes through the model's DeploymentHandle, whose Serve router ranks replicas with the same
policy; nothing has been sent anywhere at that point. A link stream that fails with 503
before its first output (a draining replica the stats have not caught up with) is retried
once through the handle: no token reached the caller yet. A link stream that breaks (the
replica died, or handed the request back on a drain) raises
:class:`~fleetserve.errors.ReplicaStreamLost` naming the replica; the ingress's resume stage
(``api/resume.py``) continues it elsewhere.

The client counts the streams this process holds open on each replica (``ongoing``): the
router reads them, so load this ingress just placed counts before the replica reports it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import AsyncIterator, Callable, Mapping, Optional

from fleetserve.deployments.model_client import LinkTarget, Route
from fleetserve.deployments.replica_link import ReplicaLinkClient
from fleetserve.engine.protocol import GenerateRequest, ModelInfo, RequestOutput
from fleetserve.errors import ModelNotFoundError, ReplicaStreamLost, ServiceUnavailableError

log = logging.getLogger(__name__)


class HandleModelClient:
    def __init__(self, handles: Mapping[str, object], link: Optional[ReplicaLinkClient] = None,
                 resolve: Optional[Callable[[str], Optional[object]]] = None):
        """``handles``: model name -> DeploymentHandle of its ModelReplica deployment (and a
        spot twin's deployment name -> its handle, for routes whose ``target`` names it);
        ``link``: stream over replica links where the route names some; ``resolve``: the
        handle of a name not in ``handles`` (a model version deployed at runtime,
        ``model@version``), or None; looked up once, then kept."""
        self._handles = dict(handles)
        self._streams = {name: h.options(stream=True) for name, h in self._handles.items()}
        self._resolve = resolve
        self._link = link
        self.ongoing: Counter[str] = Counter()  # replica id -> streams this process has open there
        self.link_streams: Counter[str] = Counter()  # replica id -> requests sent over its link

    @property
    def links_enabled(self) -> bool:
        return self._link is not None

    async def generate(self, request: GenerateRequest, route: Route) -> AsyncIterator[RequestOutput]:
        self._require(route.model)
        opened = await self._open_link(route.links) if self._link is not None else None
        if opened is not None:
            target, link = opened
            refused: list[ServiceUnavailableError] = []
            async for out in self._over_link(target, link, request, refused):
                yield out
            if not refused:
                return
        async for out in self._over_handle(request, route):
            yield out

    async def _over_link(self, target: LinkTarget, link, request: GenerateRequest,
                         refused: list) -> AsyncIterator[RequestOutput]:
        """The outputs over ``link``; a 503 before the first output is appended to ``refused``
        instead of raised (the caller then uses the handle)."""
        self.ongoing[target.replica] += 1
        self.link_streams[target.replica] += 1
        started = False
        stream = self._link.generate(link, request)
        try:
            async for out in stream:
                started = True
                yield out
        except ReplicaStreamLost as exc:  # died or handed back: the resume stage avoids this replica
            exc.replica = exc.replica or target.replica
            raise
        except ServiceUnavailableError as exc:
            if started:
                raise
            # Nothing reached the caller: a replica that is draining (scale-down, rollout)
            # or went away before the stats said so. Serve's router knows; ask it.
            log.info("replica %s refused %s over its link (%s); using the handle", target.replica, request.request_id, exc)
            refused.append(exc)
        finally:
            self.ongoing[target.replica] -= 1
            await stream.aclose()  # a caller that left early cancels the replica's work now

    async def _over_handle(self, request: GenerateRequest, route: Route) -> AsyncIterator[RequestOutput]:
        gen = self._streams[route.handle_key].generate.remote(request, prefix_key=route.prefix_key)
        finished = False
        try:
            async for out in gen:
                finished = out.finished
                yield out
        finally:
            if not finished:
                gen.cancel()  # propagates to the replica, whose generator aborts the engine request

    async def _open_link(self, targets: tuple[LinkTarget, ...]):
        """``(target, link)`` of the first target whose link opens, or None: use the handle."""
        for target in targets:
            try:
                return target, await self._link.link(target.address)
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.warning("replica link to %s (%s) failed: %s; trying the next", target.replica, target.address, exc)
        return None

    def _require(self, model: str) -> None:
        if model not in self._handles and self._resolve is not None:
            handle = self._resolve(model)
            if handle is not None:
                self._handles[model], self._streams[model] = handle, handle.options(stream=True)
        if model not in self._handles:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")

    def forget(self, model: str) -> None:
        """Drop a runtime version's handle (the version was removed)."""
        self._handles.pop(model, None)
        self._streams.pop(model, None)

    async def model_info(self, model: str) -> ModelInfo:
        self._require(model)
        return await self._handles[model].model_info.remote()
