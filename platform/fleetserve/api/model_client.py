"""How the API layer reaches engines: the :class:`ModelClient` protocol.

Two implementations: :class:`LocalModelClient` calls engines in this process (offline
tests of the HTTP layer, the "direct engine" column of the overhead benchmark), and
``fleetserve.deployments.handle_client.HandleModelClient`` goes through Ray Serve
DeploymentHandles to replica actors. The REST and gRPC front ends only see this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Optional, Protocol

from fleetserve.engine.protocol import EngineProtocol, GenerateRequest, ModelInfo, RequestOutput
from fleetserve.errors import ModelNotFoundError


@dataclass(frozen=True)
class ReplicaStatus:
    """Live load of one replica, as last reported."""

    model: str
    replica: str
    num_waiting: int
    num_running: int
    kv_usage: float
    healthy: bool = True
    draining: bool = False
    age_s: Optional[float] = None  # seconds since the stats were taken; None when unknown
    link: bool = False  # the replica advertises a replica link (server.replica_transport: direct)
    link_streams: int = 0  # requests this ingress process sent over that link


class ModelClient(Protocol):
    """Streams engine outputs for one request of one named model."""

    def generate(self, model: str, request: GenerateRequest, prefix_key: Optional[str] = None) -> AsyncIterator[RequestOutput]: ...

    async def model_info(self, model: str) -> ModelInfo: ...

    def replica_status(self) -> list[ReplicaStatus]: ...


class LocalModelClient:
    """Engines living in this process, keyed by model name."""

    def __init__(self, engines: dict[str, EngineProtocol]):
        self._engines = engines

    def _engine(self, model: str) -> EngineProtocol:
        try:
            return self._engines[model]
        except KeyError:
            raise ModelNotFoundError(f"model {model!r} does not exist", field="model") from None

    async def generate(self, model: str, request: GenerateRequest, prefix_key: Optional[str] = None) -> AsyncIterator[RequestOutput]:
        engine = self._engine(model)
        finished = False
        try:
            async for out in engine.generate(request):
                finished = out.finished
                yield out
        finally:
            if not finished:  # consumer went away (client disconnect): free the engine's slot
                await engine.abort(request.request_id)

    async def model_info(self, model: str) -> ModelInfo:
        return self._engine(model).model_info()

    def replica_status(self) -> list[ReplicaStatus]:
        rows = []
        for name, engine in self._engines.items():
            s = engine.stats()
            rows.append(ReplicaStatus(name, "local", s.num_waiting, s.num_running, s.kv_usage, s.healthy, s.draining, 0.0))
        return rows
