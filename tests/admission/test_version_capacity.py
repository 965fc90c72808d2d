"""A runtime model version (a canary, an A/B arm: its own Serve application, deployment
``<stable deployment>--<version>``) takes the model's requests by the version split, so its
replicas count as the model's admission capacity too: in this ingress's queue and in the
cluster queue actor. Before, only the stable deployment's slots were admitted across all
versions (measured in the version-scaling e2e: 7 of 8 streams pinned to v2 ran, with two v2
replicas of 8 slots each up)."""

from dataclasses import replace

from fleetserve.admission.board_pool import board_pools, with_versions
from fleetserve.admission.cluster_queue import ClusterFleetScheduler, FleetQueueActor
from fleetserve.admission.scheduler import FleetScheduler
from fleetserve.router.stats_board import ReplicaStatsBoard
from tests.admission.factories import make_config
from tests.admission.test_cluster_queue import InProcessActor
from tests.admission.test_scheduler import FakePool
from tests.admission.test_twin_capacity import DEP, TWIN, one_slot_on_each, publish

V2, OTHER = DEP + "--v2", "model-mm--v2"  # model m's version v2; model mm's (a prefix of m's name is not m)


def test_capacity_counts_each_runtime_versions_replicas_once():
    board = ReplicaStatsBoard()
    pool = board_pools({"m": DEP}, board=board, twins={"m": TWIN})["m"]
    publish(board, DEP, "d0")
    publish(board, TWIN, "s0")
    publish(board, V2, "v0", "v1")
    publish(board, OTHER, "x0")
    assert sorted(c.replica_id for c in pool.capacity_snapshot()) == ["d0", "s0", "v0", "v1"]
    assert with_versions(board, [DEP, TWIN]) == [DEP, TWIN, V2]  # the twin is not taken for a version


def test_a_version_whose_rows_nobody_refreshes_is_left_out():
    board = ReplicaStatsBoard()
    publish(board, DEP, "d0")
    publish(board, V2, "v0")
    (seen_at,) = [e.seen_at for e in board.replicas(V2)]
    assert with_versions(board, [DEP], now=seen_at + 29) == [DEP, V2]
    assert with_versions(board, [DEP], now=seen_at + 31) == [DEP]  # its application was deleted
    publish(board, V2)  # or its router saw it go: no replicas, nothing to count
    assert with_versions(board, [DEP], now=seen_at) == [DEP]


async def test_the_cluster_queue_actor_counts_the_pushed_version_replicas():
    cfg = make_config(tick_s=0.01, max_inflight_per_replica=1, queue_actor_idle_exit_s=None)
    actor = InProcessActor(FleetQueueActor(cfg.model_dump(mode="json"), {"m": DEP}, None, ReplicaStatsBoard()))
    ingress_board = ReplicaStatsBoard()
    publish(ingress_board, DEP, "d0")
    publish(ingress_board, V2, "v0")
    client = ClusterFleetScheduler("m", lambda: actor, FleetScheduler(cfg, FakePool()), board=ingress_board,
                                   deployments=[DEP])
    await one_slot_on_each(client, actor, ["d0", "v0"])


def test_a_version_is_aged_against_the_models_own_rows_and_other_models_are_not_versions():
    """In the cluster queue actor rows arrive only with pushes: a quiet spell ages the stable
    rows and the version's alike, and the version still counts; a push without it (its
    application deleted) leaves it out. A model named ``m: chat`` has the deployment
    ``model-m--chat``, which looks like a version of ``m`` and is not."""
    board = ReplicaStatsBoard()
    publish(board, DEP, "d0")
    publish(board, V2, "v0")
    publish(board, "model-m--chat", "c0")
    pool = board_pools({"m": DEP, "m: chat": "model-m--chat"}, board=board)["m"]
    (seen_at,) = [e.seen_at for e in board.replicas(V2)]
    assert with_versions(board, [DEP], now=None) == [DEP, "model-m--chat", V2]  # no exclusion given
    assert sorted(c.replica_id for c in pool.capacity_snapshot()) == ["d0", "v0"]
    board._rows[DEP] = {k: replace(e, seen_at=seen_at + 60) for k, e in board._rows[DEP].items()}  # pushed alone later
    assert sorted(c.replica_id for c in pool.capacity_snapshot()) == ["d0"]
