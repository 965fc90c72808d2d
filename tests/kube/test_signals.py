"""The signal table against recorded Node objects."""

from __future__ import annotations

from fleetserve.kube import signals as S


def test_recorded_nodes_match_expected_signals(recorded_nodes):
    for key, node in recorded_nodes["nodes"].items():
        assert [s.name for s in S.match(node)] == recorded_nodes["expected_signals"][key], key


def test_every_signal_is_seen_in_a_recorded_node(recorded_nodes):
    seen = {name for names in recorded_nodes["expected_signals"].values() for name in names}
    missing = {s.name for s in S.SIGNALS} - seen
    # AWS scheduled maintenance / ASG termination, AKS terminate/freeze: same mechanism as rows that are covered.
    assert missing <= {"aws-scheduled-maintenance", "aws-asg-termination", "aks-terminate-scheduled", "aks-freeze-scheduled"}


def test_table_names_are_unique():
    names = [s.name for s in S.SIGNALS]
    assert len(names) == len(set(names))


def test_condition_must_be_true():
    node = {"metadata": {"name": "n"}, "status": {"conditions": [{"type": "PreemptScheduled", "status": "False"}]}}
    assert S.match(node) == []


def test_taint_value_must_match_when_the_row_names_one():
    node = {"metadata": {"name": "n"}, "spec": {"taints": [{"key": "karpenter.sh/disruption", "value": "candidate"}]}}
    assert S.match(node) == []
