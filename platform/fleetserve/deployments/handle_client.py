"""The ingress's :class:`fleetserve.api.model_client.ModelClient` over Ray Serve DeploymentHandles."""

from __future__ import annotations

import time
from typing import AsyncIterator, Optional

from fleetserve.api.model_client import ReplicaStatus
from fleetserve.engine.protocol import GenerateRequest, ModelInfo, RequestOutput
from fleetserve.errors import ModelNotFoundError, ServiceUnavailableError
from fleetserve.router.stats_board import ReplicaStatsBoard, process_board


class HandleModelClient:
    def __init__(self, handles: dict, deployment_names: dict[str, str], board: Optional[ReplicaStatsBoard] = None):
        """``handles``: model name -> DeploymentHandle of its ModelReplica deployment;
        ``deployment_names``: model name -> Serve deployment name (key of the stats board)."""
        self._handles = handles
        self._streams = {name: h.options(stream=True) for name, h in handles.items()}
        self._deployments = deployment_names
        self._board = board or process_board()

    def _check(self, model: str) -> None:
        if model not in self._handles:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")
        rows = self._board.replicas(self._deployments[model])
        # None: the router has not reported yet (first request); [] : Serve knows no live replica.
        if rows is not None and not rows:
            raise ServiceUnavailableError(f"no replica of `{model}` is ready", retry_after_s=2.0)

    async def generate(self, model: str, request: GenerateRequest, prefix_key: Optional[str] = None) -> AsyncIterator[RequestOutput]:
        self._check(model)
        gen = self._streams[model].generate.remote(request, prefix_key=prefix_key)
        finished = False
        try:
            async for out in gen:
                finished = out.finished
                yield out
        finally:
            if not finished:
                gen.cancel()  # propagates to the replica, whose generator aborts the engine request

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
                ))
        return out
