"""Latest replica stats seen by the routers of this process, readable by the ingress.

Serve pushes each replica's ``record_routing_stats`` to every router of its deployment; the
router converts them to :class:`ReplicaStats` once and publishes them here. The ingress's
replica choice, fleet admission pool, ``/admin/status`` and ``/metrics`` need the same
numbers; reading them here costs no extra RPC. One board per process (:func:`process_board`) because Serve constructs
routers itself and cannot hand them an object.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Mapping, Optional

from fleetserve.deployments.replica_stats import ReplicaStats


@dataclass(frozen=True)
class BoardEntry:
    deployment: str
    replica: str
    stats: ReplicaStats
    seen_at: float


class ReplicaStatsBoard:
    def __init__(self):
        self._lock = threading.Lock()  # routers may run on another event-loop thread
        self._rows: dict[str, dict[str, BoardEntry]] = {}

    def publish(self, deployment: str, replicas: Mapping[str, ReplicaStats]) -> None:
        """Replace a deployment's rows with ``{replica_id: stats}``."""
        now = time.time()
        with self._lock:
            self._rows[deployment] = {rid: BoardEntry(deployment, rid, s, now) for rid, s in replicas.items()}

    def deployments(self) -> list[str]:
        """Every deployment some router has reported, by name."""
        with self._lock:
            return sorted(self._rows)

    def replicas(self, deployment: str) -> Optional[list[BoardEntry]]:
        """None when no router of this deployment has reported yet."""
        with self._lock:
            rows = self._rows.get(deployment)
            return None if rows is None else list(rows.values())


def from_routing_stats(rows: Mapping[str, Optional[Mapping]]) -> dict[str, ReplicaStats]:
    """``{replica_id: routing-stats dict}`` as Ray Serve carries them -> typed rows."""
    return {rid: ReplicaStats.from_dict(rid, d) for rid, d in rows.items()}


def to_routing_stats(entries: list[BoardEntry]) -> dict[str, dict]:
    """Typed rows -> the dicts a Ray actor call carries (the cluster queue's stats push)."""
    return {e.replica: e.stats.to_dict() for e in entries}


_BOARD = ReplicaStatsBoard()


def process_board() -> ReplicaStatsBoard:
    return _BOARD
