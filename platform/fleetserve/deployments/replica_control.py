"""Control calls to one chosen replica (the admin drain path), through its DeploymentHandle.

Serve's router places handle calls itself; the replica router honours a ``target_replica``
keyword (``router/replica_router.py``), and the replica ignores a call meant for another one
(``ModelReplica.set_draining``), so a call never drains the wrong replica.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Protocol, Sequence

from fleetserve.deployments.replica_stats import DrainAck
from fleetserve.engine.protocol import LoraRef
from fleetserve.errors import ModelNotFoundError

TARGET_REPLICA_KWARG = "target_replica"


class ReplicaControl(Protocol):
    async def set_draining(self, model: str, replica_id: str, draining: bool,
                           mode: Optional[str] = None) -> DrainAck:
        """``mode``: ``migrate`` / ``finish`` for this drain; None: the model's drain_mode."""
        ...


class AdapterControl(Protocol):
    """LoRA adapter calls to each of a model's replicas (``replica_ids``; empty: whichever
    replica Serve picks, for a model whose replicas have not reported yet). One dict per call."""

    async def add_adapter(self, model: str, replica_ids: Sequence[str], ref: LoraRef) -> list[dict]: ...

    async def remove_adapter(self, model: str, replica_ids: Sequence[str], name: str) -> list[dict]: ...

    async def list_adapters(self, model: str, replica_ids: Sequence[str]) -> list[dict]: ...


class HandleReplicaControl:
    def __init__(self, handles: Mapping[str, object], resolve: Optional[Callable[[str], Optional[object]]] = None):
        """``handles``: route name -> DeploymentHandle; ``resolve``: the handle of a name not
        in it (a runtime version, ``model@version``), or None; looked up once, then kept."""
        self._handles = dict(handles)
        self._resolve = resolve

    def _handle(self, model: str):
        if model not in self._handles and self._resolve is not None:
            handle = self._resolve(model)
            if handle is not None:
                self._handles[model] = handle
        if model not in self._handles:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")
        return self._handles[model]

    async def set_draining(self, model: str, replica_id: str, draining: bool,
                           mode: Optional[str] = None) -> DrainAck:
        handle = self._handle(model)
        return await handle.set_draining.remote(draining, mode=mode, **{TARGET_REPLICA_KWARG: replica_id})

    async def _each(self, model: str, replica_ids: Sequence[str], method: str, *args) -> list[dict]:
        handle = self._handle(model)
        targets: list[Optional[str]] = list(replica_ids) or [None]
        return [await getattr(handle, method).remote(*args, **{TARGET_REPLICA_KWARG: rid}) for rid in targets]

    async def add_adapter(self, model: str, replica_ids: Sequence[str], ref: LoraRef) -> list[dict]:
        return await self._each(model, replica_ids, "add_adapter", ref)

    async def remove_adapter(self, model: str, replica_ids: Sequence[str], name: str) -> list[dict]:
        return await self._each(model, replica_ids, "remove_adapter", name)

    async def list_adapters(self, model: str, replica_ids: Sequence[str]) -> list[dict]:
        return await self._each(model, replica_ids, "list_adapters")
