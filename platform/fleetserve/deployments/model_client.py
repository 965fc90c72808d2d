"""The "stream" stage's contract: how the ingress reaches a model's replicas.

The router decides where a request should go (a :class:`Route`, built by
:mod:`fleetserve.router.chooser`); a :class:`ModelClient` carries it there and streams the
engine's outputs back. :class:`fleetserve.deployments.handle_client.HandleModelClient` is the
implementation on Ray Serve (replica links, else DeploymentHandles); tests pass scripted
clients that honour the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Optional, Protocol

from fleetserve.engine.protocol import GenerateRequest, ModelInfo, RequestOutput


@dataclass(frozen=True)
class LinkTarget:
    """A replica that can be reached over its replica link."""

    replica: str
    address: str  # "host:port"


@dataclass(frozen=True)
class Route:
    """Where one engine request should go.

    ``links``: replicas to try over their links, best first. When it is empty (no replica
    advertises a link, or links are off) the request goes through the Serve handle, whose
    router ranks replicas with the same policy; ``prefix_key`` is passed along for it.
    ``target``: the handle that path takes when it is not the model's own deployment (the
    model version's spot twin, named by its deployment); None: the model's.
    """

    model: str
    prefix_key: Optional[str] = None
    links: tuple[LinkTarget, ...] = ()
    target: Optional[str] = None

    @property
    def handle_key(self) -> str:
        return self.target or self.model


class ModelClient(Protocol):
    """Streams engine outputs for one request of one named model."""

    def generate(self, request: GenerateRequest, route: Route) -> AsyncIterator[RequestOutput]:
        """Outputs until one with ``finished``; leaving early cancels the request on the replica."""
        ...

    async def model_info(self, model: str) -> ModelInfo: ...
