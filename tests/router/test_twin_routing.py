"""One model version on two deployments (the on-demand base and its spot twin): the router
ranks their replicas as one pool, the handle path takes the deployment of the chosen replica,
and a request that loses its spot replica continues on the on-demand one."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fleetserve.api.resume import resumable_stream
from fleetserve.deployments.handle_client import HandleModelClient
from fleetserve.deployments.replica_stats import ReplicaStats
from fleetserve.engine.protocol import GenerateRequest, RequestOutput
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import RequestMigrated, ServiceUnavailableError
from fleetserve.router.chooser import ReplicaChooser
from fleetserve.router.replica_policy import rank_groups
from fleetserve.router.stats_board import ReplicaStatsBoard, from_routing_stats

OD, SPOT = "model-m", "model-m--spot"


class Counts:
    def __init__(self, links: bool = False):
        self.ongoing: Counter = Counter()
        self.link_streams: Counter = Counter()
        self._links = links

    @property
    def links_enabled(self) -> bool:
        return self._links


def chooser(board, links=False, seed=0) -> ReplicaChooser:
    return ReplicaChooser({"m": OD}, Counts(links), board=board, rng=random.Random(seed), twins={"m": SPOT})


def test_rank_groups_names_the_group_of_the_first_replica():
    groups = {None: [ReplicaStats("a", num_running=9)], SPOT: [ReplicaStats("s", num_running=0)]}
    target, order = rank_groups(groups, {}, None, random.Random(0))
    assert (target, order) == (SPOT, ["s", "a"])
    target, order = rank_groups({None: [], SPOT: []}, {}, None, random.Random(0))
    assert (target, order) == (None, [])


def test_rank_groups_skips_draining_and_standby_spot_replicas():
    groups = {None: [ReplicaStats("a", num_running=9)],
              SPOT: [ReplicaStats("s", draining=True), ReplicaStats("w", standby=True)]}
    for seed in range(20):
        target, order = rank_groups(groups, {}, None, random.Random(seed))
        assert target is None and order[0] == "a" and "w" not in order


def test_load_spreads_over_both_deployments_in_proportion_to_replicas():
    board = ReplicaStatsBoard()
    board.publish(OD, from_routing_stats({"a": {}}))
    board.publish(SPOT, from_routing_stats({"s1": {}, "s2": {}, "s3": {}}))
    c = chooser(board, seed=1)
    targets = Counter(c.choose("m", None).target for _ in range(4000))
    assert set(targets) == {None, SPOT}
    assert 0.65 < targets[SPOT] / 4000 < 0.85  # 3 of 4 idle replicas are spot


def test_handle_path_follows_load_across_deployments():
    board = ReplicaStatsBoard()
    board.publish(OD, from_routing_stats({"a": {"num_running": 20}}))
    board.publish(SPOT, from_routing_stats({"s": {"num_running": 1}}))
    assert {chooser(board, seed=s).choose("m", None).target for s in range(10)} == {SPOT}
    board.publish(SPOT, from_routing_stats({"s": {"num_running": 40}}))
    assert {chooser(board, seed=s).choose("m", None).target for s in range(10)} == {None}


def test_links_rank_replicas_of_both_deployments():
    board = ReplicaStatsBoard()
    board.publish(OD, from_routing_stats({"a": {"num_running": 9, "link": "10.0.0.1:1"}}))
    board.publish(SPOT, from_routing_stats({"s": {"num_running": 0, "link": "10.0.0.2:1"}}))
    route = chooser(board, links=True).choose("m", None)
    assert [t.replica for t in route.links] == ["s", "a"] and route.target == SPOT


def test_twin_without_reports_routes_like_before_and_only_empty_everywhere_is_503():
    board = ReplicaStatsBoard()
    board.publish(OD, from_routing_stats({"a": {}}))
    assert chooser(board).choose("m", None).target is None  # the twin's router has not reported yet
    board.publish(OD, {})
    board.publish(SPOT, from_routing_stats({"s": {}}))
    assert chooser(board).choose("m", None).target == SPOT  # no on-demand replica: spot serves
    board.publish(SPOT, {})
    with pytest.raises(ServiceUnavailableError):
        chooser(board).choose("m", None)


def test_replica_status_lists_twin_replicas_under_the_model_with_their_handle():
    board = ReplicaStatsBoard()
    board.publish(OD, from_routing_stats({"a": {}}))
    board.publish(SPOT, from_routing_stats({"s": {"capacity_type": "spot"}}))
    rows = {r.replica: r for r in chooser(board).replica_status()}
    assert rows["a"].model == rows["s"].model == "m"
    assert (rows["a"].target, rows["s"].target, rows["s"].capacity_type) == (None, SPOT, "spot")


class Gen:
    """A DeploymentResponseGenerator stand-in: iterates, and ``cancel()`` closes the stream."""

    def __init__(self, agen):
        self._agen, self.cancelled = agen, False

    def __aiter__(self):
        return self._agen.__aiter__()

    def cancel(self):
        self.cancelled = True


class Handle:
    """A DeploymentHandle stand-in: the spot one hands the request back after two tokens
    (a drain in migrate mode); the on-demand one finishes it."""

    def __init__(self, tag: str, migrate_after: int | None = None):
        self.tag, self.migrate_after, self.calls = tag, migrate_after, []

    def options(self, **_):
        return self

    @property
    def generate(self):
        return self

    def remote(self, request: GenerateRequest, prefix_key=None):
        self.calls.append(list(request.resume_token_ids or []))
        return Gen(self._stream(request))

    async def _stream(self, request):
        done = len(request.resume_token_ids or [])
        for pos in range(done, 6):
            if self.migrate_after is not None and pos == self.migrate_after:
                raise RequestMigrated("drained", replica=self.tag)
            yield RequestOutput(request.request_id, token_ids_delta=[100 + pos], finished=pos == 5,
                                finish_reason="length" if pos == 5 else None)


async def test_stream_migrated_off_a_spot_replica_resumes_on_the_on_demand_deployment():
    board = ReplicaStatsBoard()
    board.publish(OD, from_routing_stats({"a": {"num_running": 5}}))
    board.publish(SPOT, from_routing_stats({"s": {"num_running": 0}}))
    od, spot = Handle("a"), Handle("s", migrate_after=2)
    client = HandleModelClient({"m": od, SPOT: spot})
    c = ReplicaChooser({"m": OD}, client, board=board, rng=random.Random(0), twins={"m": SPOT})
    request = GenerateRequest(request_id="r", prompt="x", params=SamplingParams(max_tokens=6, temperature=0))
    route = c.choose("m", None)
    assert route.target == SPOT

    def reroute(_avoid):  # the spot replica now reports draining, as it does once drained
        board.publish(SPOT, from_routing_stats({"s": {"draining": True}}))
        return c.choose("m", None)

    tokens = [t async for out in resumable_stream(client, request, route, reroute) for t in out.token_ids_delta]
    assert tokens == [100, 101, 102, 103, 104, 105]  # none lost, repeated or changed
    assert spot.calls == [[]] and od.calls == [[100, 101]]
