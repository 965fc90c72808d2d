"""Ray's own node-drain notices as interruption notices for the replicas on those nodes.

Ray drains a node through its GCS (``DrainNode``: autoscaler v2 preemption and idle
termination, ``ray drain-node``, a cloud's spot notice handled by a provider integration),
with an optional deadline after which the node goes away. The scaling controller reads the
draining nodes once per tick from a :class:`NodeDrainSource` (the real one asks Ray's GCS,
``application/serve_fleet.py``; tests pass a fake) and turns each replica on such a node
into an :class:`InterruptionNotice`. The policy then treats it like a spot interruption:
its replacement is requested at once and it is drained (in-flight requests migrated)
before the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Protocol, Tuple

from fleetserve.autoscaler.snapshot import InterruptionNotice


@dataclass(frozen=True)
class NodeDrain:
    """One node Ray is draining. ``deadline``: wall-clock seconds (``time.time()``) when it goes
    away; None when the drain set none."""

    node_id: str
    deadline: Optional[float] = None


class NodeDrainSource(Protocol):
    def draining_nodes(self) -> Mapping[str, NodeDrain]:
        """Node id -> its drain, for every node being drained now."""
        ...


def interruptions_on_draining_nodes(replicas: Iterable, drains: Mapping[str, NodeDrain], now: float, wall_now: float,
                                    no_deadline_s: float) -> Tuple[InterruptionNotice, ...]:
    """A notice for each replica (anything with ``replica_id`` and ``node_id``) on a draining
    node, its deadline moved onto the controller's clock (``now``; ``wall_now`` is the same
    instant on the wall clock). A drain without a deadline gets ``no_deadline_s`` from now:
    the node may go any time, so its replicas are drained at once."""
    out = []
    for r in replicas:
        drain = drains.get(r.node_id) if r.node_id else None
        if drain is None:
            continue
        left = no_deadline_s if drain.deadline is None else max(0.0, drain.deadline - wall_now)
        out.append(InterruptionNotice(r.replica_id, now + left))
    return tuple(sorted(out, key=lambda n: n.replica_id))
