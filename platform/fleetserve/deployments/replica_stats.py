"""What a model replica reports about itself, and what the ingress shows of it.

:class:`ReplicaStats` is the one typed form of a replica's live load. The replica builds it
(``ModelReplica.replica_stats``); Ray Serve carries it as a plain dict between the replica
and every router of its deployment (``record_routing_stats``), so the dict form exists only
at that boundary: :meth:`ReplicaStats.to_dict` on the replica, :meth:`ReplicaStats.from_dict`
where Serve hands it over (the replica router, the cluster queue actor). The router, the
fleet admission pool and ``/admin/status`` all read the dataclass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class ReplicaStats:
    """One replica's load as it last reported it."""

    replica: str
    num_waiting: int = 0
    num_running: int = 0
    kv_usage: float = 0.0
    healthy: bool = True
    draining: bool = False
    in_flight: int = 0  # requests streaming from this replica through any transport
    link: Optional[str] = None  # "host:port" of its replica link; None: reached through the handle only
    ts: Optional[float] = None  # wall-clock time the stats were taken (time.time()); None when unknown
    node_id: Optional[str] = None  # the Ray node it runs on (node drains)
    node_ip: Optional[str] = None  # that node's IP (a Kubernetes drain names pods by IP)
    standby: bool = False  # a warm-pool standby: loaded, engine asleep, out of routing
    capacity_type: Optional[str] = None  # "spot" | "on_demand" where its deployment says; None: unknown
    metrics: Optional[str] = None  # "host:port" of its metrics listener; None: not served

    @property
    def accepting(self) -> bool:
        """Healthy, not draining and not a standby: it may be sent new work."""
        return self.healthy and not self.draining and not self.standby

    def to_dict(self) -> dict[str, Any]:
        """The form Ray Serve carries (``record_routing_stats``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, replica: str, data: Optional[Mapping[str, Any]]) -> "ReplicaStats":
        """From a routing-stats dict; missing fields (a replica that has not reported yet:
        Serve gives ``{}``) take their defaults."""
        d = data or {}
        ts = d.get("ts")
        link = d.get("link")
        return cls(
            replica=replica,
            num_waiting=int(d.get("num_waiting", 0)),
            num_running=int(d.get("num_running", 0)),
            kv_usage=float(d.get("kv_usage", 0.0)),
            healthy=bool(d.get("healthy", True)),
            draining=bool(d.get("draining", False)),
            in_flight=int(d.get("in_flight", 0)),
            link=str(link) if link else None,
            ts=None if ts is None else float(ts),
            node_id=_optional_str(d.get("node_id")),
            node_ip=_optional_str(d.get("node_ip")),
            standby=bool(d.get("standby", False)),
            capacity_type=_optional_str(d.get("capacity_type")),
            metrics=_optional_str(d.get("metrics")),
        )


def _optional_str(value: Any) -> Optional[str]:
    return str(value) if value else None


@dataclass(frozen=True)
class ReplicaStatus:
    """One row of ``/admin/status`` and the replica gauges of ``/metrics``."""

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
    node_id: Optional[str] = None
    node_ip: Optional[str] = None
    standby: bool = False
    capacity_type: Optional[str] = None
    in_flight: int = 0
    metrics: Optional[str] = None  # its metrics listener, "host:port"
    link_address: Optional[str] = None  # its replica link, "host:port"
    target: Optional[str] = None  # the handle that reaches it when not the model's own (its spot twin deployment)


@dataclass(frozen=True)
class DrainAck:
    """A replica's answer to ``set_draining``: whether the call reached it and what it holds."""

    replica: str
    applied: bool
    draining: bool
    in_flight: int  # requests streaming there when the call arrived
    migrated: int = 0  # of those, handed back to their ingress to resume elsewhere (drain mode migrate)


@dataclass(frozen=True)
class StandbyAck:
    """A replica's answer to ``set_standby``: whether the call reached it and the engine's
    state after it (``seconds``: how long the sleep or wake took)."""

    replica: str
    applied: bool
    standby: bool
    seconds: float = 0.0
