"""The replicas a model version starts with under the scaling controller: the policy's own
first plan for an idle, empty fleet.

Why: Serve starts a deployment at its ``initial_replicas`` before the controller's first
tick. If that number differs from what the controller then plans, the count moves at start
(measured in tests/application/test_scaling_e2e.py: 1 -> 3 -> 4 -> 3 replicas for a plan of
one serving replica and one standby), and every replica started and stopped on the way costs
a full model load. Starting at the plan makes the controller's first count a no-op.
"""

from __future__ import annotations

from typing import Dict

from fleetserve.autoscaler.config import ModelPolicyConfig
from fleetserve.autoscaler.policy import PolicyState
from fleetserve.autoscaler.registry import make_policy
from fleetserve.autoscaler.snapshot import CapacityType, ModelSnapshot, SpotMarket


def initial_replicas(config: ModelPolicyConfig) -> Dict[CapacityType, int]:
    """Cold starts per capacity type in the policy's first decision for a fleet with no
    replica and no traffic: serving replicas up to the minimum, plus the warm pool.

    Spot counts as available: the on-demand share is then the smallest the policy would
    plan (its base), and the controller adds on-demand replicas itself when spot turns out
    to be missing: starting fewer and adding later moves the count one way only."""
    snap = ModelSnapshot(model="", replicas=(), spot=SpotMarket(available=True))
    decision, _ = make_policy(config).decide(snap, PolicyState(), 0.0)
    out: Dict[CapacityType, int] = {}
    for c in decision.cold_starts:
        out[c.capacity_type] = out.get(c.capacity_type, 0) + c.count
    return out
