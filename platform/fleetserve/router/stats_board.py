"""Latest replica stats seen by the routers of this process, readable by the ingress.

Serve pushes each replica's ``record_routing_stats`` to every router of its deployment.
The ingress's ``/admin/status`` and ``/metrics`` need the same numbers; reading them here
costs no extra RPC. One board per process (:func:`process_board`) because Serve constructs
routers itself and cannot hand them an object.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class BoardEntry:
    deployment: str
    replica: str
    stats: dict
    seen_at: float


class ReplicaStatsBoard:
    def __init__(self):
        self._lock = threading.Lock()  # routers may run on another event-loop thread
        self._rows: dict[str, dict[str, BoardEntry]] = {}

    def publish(self, deployment: str, replicas: dict[str, dict]) -> None:
        """Replace a deployment's rows with ``{replica_id: stats}``."""
        now = time.time()
        with self._lock:
            self._rows[deployment] = {rid: BoardEntry(deployment, rid, dict(s), now) for rid, s in replicas.items()}

    def replicas(self, deployment: str) -> Optional[list[BoardEntry]]:
        """None when no router of this deployment has reported yet."""
        with self._lock:
            rows = self._rows.get(deployment)
            return None if rows is None else list(rows.values())


_BOARD = ReplicaStatsBoard()


def process_board() -> ReplicaStatsBoard:
    return _BOARD
