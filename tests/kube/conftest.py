"""Factories and recorded data for the spot watcher tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def recorded_nodes() -> dict:
    return json.loads((DATA / "nodes.json").read_text())


@pytest.fixture(scope="session")
def watch_session() -> list[dict]:
    return [json.loads(line) for line in (DATA / "watch-session.jsonl").read_text().splitlines() if line]


def make_node(name: str = "node-a", **overrides) -> dict:
    """A Node as JSON; overrides: taints=[...], conditions=[...], unschedulable=bool, metadata={...}."""
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "1"},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    if "taints" in overrides:
        node["spec"]["taints"] = copy.deepcopy(overrides.pop("taints"))
    if "unschedulable" in overrides:
        node["spec"]["unschedulable"] = overrides.pop("unschedulable")
    if "conditions" in overrides:
        node["status"]["conditions"] += copy.deepcopy(overrides.pop("conditions"))
    node["metadata"].update(overrides.pop("metadata", {}))
    assert not overrides, f"unknown overrides {sorted(overrides)}"
    return node


SPOT_ITN = {"key": "aws-node-termination-handler/spot-itn", "value": "x", "effect": "NoSchedule"}
REBALANCE = {"key": "aws-node-termination-handler/rebalance-recommendation", "value": "y", "effect": "PreferNoSchedule"}
