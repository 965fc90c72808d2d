"""decide(): every transition of a node through a termination episode."""

from __future__ import annotations

from fleetserve.kube.watcher import ADDED, DELETED, MODIFIED, SYNC, WatchState, decide
from tests.kube.conftest import REBALANCE, SPOT_ITN, make_node


def test_healthy_node_is_left_alone():
    assert decide(MODIFIED, make_node(), WatchState()) == (None, WatchState())


def test_first_signal_drains_once():
    node = make_node("n1", taints=[SPOT_ITN])
    decision, state = decide(MODIFIED, node, WatchState())
    assert decision.node == "n1" and decision.signals == ("aws-spot-interruption",) and decision.deadline_s == 120
    assert state.drained == {"n1"}
    again, state2 = decide(MODIFIED, node, state)  # heartbeats keep modifying the Node
    assert again is None and state2 == state


def test_signal_seen_in_the_initial_list_drains():
    decision, _ = decide(SYNC, make_node("n1", unschedulable=True), WatchState())
    assert decision.signals == ("cordoned",) and decision.deadline_s is None


def test_shortest_notice_wins():
    gke = [{"type": "ImpendingNodeTermination", "status": "True"}]
    decision, _ = decide(ADDED, make_node("n1", taints=[SPOT_ITN], conditions=gke), WatchState())
    assert decision.signals == ("aws-spot-interruption", "gke-impending-termination-condition")
    assert decision.deadline_s == 30


def test_cleared_signal_ends_the_episode():
    _, state = decide(MODIFIED, make_node("n1", unschedulable=True), WatchState())
    decision, state = decide(MODIFIED, make_node("n1", unschedulable=False), state)  # uncordoned
    assert decision is None and state.drained == frozenset()
    decision, _ = decide(MODIFIED, make_node("n1", unschedulable=True), state)  # cordoned again
    assert decision is not None


def test_advisory_only_when_asked():
    node = make_node("n1", taints=[REBALANCE])
    assert decide(MODIFIED, node, WatchState())[0] is None
    decision, _ = decide(MODIFIED, node, WatchState(), drain_on_advisory=True)
    assert decision.signals == ("aws-rebalance-recommendation",)


def test_deleted_node():
    drained = WatchState(frozenset({"n1"}))
    assert decide(DELETED, make_node("n1"), drained) == (None, WatchState())
    decision, state = decide(DELETED, make_node("n2"), drained)  # vanished without notice
    assert decision.signals == ("node-deleted",) and decision.deadline_s == 0.0 and state == drained


def test_other_events_are_ignored():
    assert decide("BOOKMARK", {"metadata": {"resourceVersion": "9"}}, WatchState()) == (None, WatchState())
    assert decide("ERROR", {"code": 410}, WatchState()) == (None, WatchState())


def test_recorded_watch_session(watch_session):
    state, drained = WatchState(), []
    for event in watch_session:
        decision, state = decide(event["type"], event["object"], state)
        if decision:
            drained.append((decision.node, decision.reason))
    assert drained == [("ip-10-0-3-7.ec2.internal", "aws-spot-interruption"), ("worker-gpu-3", "cordoned"),
                       ("worker-gpu-3", "cordoned")]
    assert state.drained == {"worker-gpu-3"}
