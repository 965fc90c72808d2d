"""Pure replica choice: power of two choices on live load, prefix affinity when even.

``choose(loads, prefix_key, rng, slack)`` returns replica ids in the order the router should
try them. Two random replicas are compared on :func:`load_score`; the affinity replica of
``prefix_key`` (rendezvous hashing over all candidates, so a key keeps its replica while the
set changes only around it) goes first when its score is within ``slack`` of the better
sampled one -- prefix-cache hits are worth a little imbalance, not a queue.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from fleetserve.deployments.replica_stats import ReplicaStats

# A replica whose KV pool is nearly full will preempt or queue new work.
KV_PRESSURE_THRESHOLD = 0.9
KV_PRESSURE_PENALTY = 8


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica's load as the router sees it. ``ongoing`` is Serve's live count of
    requests this process has in flight there; the rest come from the replica's last stats."""

    replica_id: str
    num_waiting: int = 0
    num_running: int = 0
    kv_usage: float = 0.0
    ongoing: Optional[int] = None
    accepting: bool = True
    standby: bool = False  # a warm-pool standby: never routed to, even when nothing else accepts

    @classmethod
    def from_stats(cls, stats: ReplicaStats, ongoing: Optional[int] = None) -> "ReplicaLoad":
        """From a replica's last reported stats plus the caller's live count."""
        return cls(
            replica_id=stats.replica,
            num_waiting=stats.num_waiting,
            num_running=stats.num_running,
            kv_usage=stats.kv_usage,
            ongoing=ongoing,
            accepting=stats.accepting,
            standby=stats.standby,
        )


def load_score(r: ReplicaLoad) -> float:
    """Lower is better. Waiting requests count double: they wait behind the running ones."""
    busy = r.num_running + 2 * r.num_waiting
    if r.ongoing is not None:
        busy = max(busy, r.ongoing + r.num_waiting)
    if r.kv_usage >= KV_PRESSURE_THRESHOLD:
        busy += KV_PRESSURE_PENALTY
    return busy


def affinity_replica(prefix_key: str, replica_ids: Sequence[str]) -> str:
    """Rendezvous (highest random weight) hashing of the key over the replicas."""
    def weight(rid: str) -> bytes:
        return hashlib.blake2b(f"{prefix_key}|{rid}".encode(), digest_size=8).digest()

    return max(replica_ids, key=weight)


def choose(loads: Sequence[ReplicaLoad], prefix_key: Optional[str], rng: random.Random, slack: float = 2) -> list[str]:
    """Replica ids to try, best first (at most three)."""
    # A draining replica still beats none (it refuses, and Serve retries elsewhere); a
    # standby's engine is asleep, so it is never a candidate until the controller wakes it.
    routable = [r for r in loads if not r.standby]
    pool = [r for r in routable if r.accepting] or routable
    if len(pool) <= 1:
        return [r.replica_id for r in pool]
    a, b = rng.sample(pool, 2)
    ranked = sorted((a, b), key=load_score)
    if prefix_key is not None:
        home_id = affinity_replica(prefix_key, [r.replica_id for r in pool])
        home = next(r for r in pool if r.replica_id == home_id)
        if load_score(home) <= load_score(ranked[0]) + slack:
            return [home.replica_id] + [r.replica_id for r in ranked if r.replica_id != home.replica_id]
    return [r.replica_id for r in ranked]


def rank(stats: Sequence[ReplicaStats], ongoing: Mapping[str, Optional[int]], prefix_key: Optional[str],
         rng: random.Random, slack: float = 2) -> list[str]:
    """The one replica choice of the platform, used by Serve's router and by the ingress's
    link routing alike: :func:`choose` over ``stats`` with the caller's live in-flight
    counts (``ongoing``: replica id -> count, None or absent when unknown)."""
    return choose([ReplicaLoad.from_stats(s, ongoing.get(s.replica)) for s in stats], prefix_key, rng, slack)


def rank_groups(groups: Mapping[str, Sequence[ReplicaStats]], ongoing: Mapping[str, Optional[int]],
                prefix_key: Optional[str], rng: random.Random, slack: float = 2) -> tuple[Optional[str], list[str]]:
    """:func:`rank` over the replicas of several deployments that serve one model version as
    one pool (its on-demand base and its spot twin): the replica order, and the group (key
    of ``groups``) of the first replica, which the handle path then takes (None: no
    replica). Power of two over the union, so each deployment gets load in proportion to its
    free replicas, and a draining or standby replica of either never goes first."""
    owner = {s.replica: g for g, rows in groups.items() for s in rows}
    order = rank([s for rows in groups.values() for s in rows], ongoing, prefix_key, rng, slack)
    return (owner[order[0]] if order else None), order
