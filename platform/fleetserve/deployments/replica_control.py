"""Control calls to one chosen replica (the admin drain path), through its DeploymentHandle.

Serve's router places handle calls itself; the replica router honours a ``target_replica``
keyword (``router/replica_router.py``), and the replica ignores a call meant for another one
(``ModelReplica.set_draining``), so a call never drains the wrong replica.
"""

from __future__ import annotations

from typing import Mapping, Optional, Protocol

from fleetserve.deployments.replica_stats import DrainAck
from fleetserve.errors import ModelNotFoundError

TARGET_REPLICA_KWARG = "target_replica"


class ReplicaControl(Protocol):
    async def set_draining(self, model: str, replica_id: str, draining: bool,
                           mode: Optional[str] = None) -> DrainAck:
        """``mode``: ``migrate`` / ``finish`` for this drain; None: the model's drain_mode."""
        ...


class HandleReplicaControl:
    def __init__(self, handles: Mapping[str, object]):
        self._handles = dict(handles)

    async def set_draining(self, model: str, replica_id: str, draining: bool,
                           mode: Optional[str] = None) -> DrainAck:
        handle = self._handles.get(model)
        if handle is None:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", field="model")
        return await handle.set_draining.remote(draining, mode=mode, **{TARGET_REPLICA_KWARG: replica_id})
