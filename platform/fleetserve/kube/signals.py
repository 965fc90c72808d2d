"""Node termination signals, in one table: what a cloud, a node autoscaler or an operator puts
on a Kubernetes Node before the machine goes away.

Each row names where the signal lives on the Node (a taint key, optionally with a value, or a
condition type that is ``True``), who sets it, and how much notice it usually gives. A node
matching a ``TERMINATING`` row is drained; an ``ADVISORY`` one only when the watcher is told to
(AWS's rebalance recommendation often precedes an interruption by minutes, but not always).
Adding a provider is adding a row; :func:`match` is the only reader.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional


class Urgency(str, enum.Enum):
    TERMINATING = "terminating"
    ADVISORY = "advisory"


@dataclass(frozen=True)
class TerminationSignal:
    name: str  # short id, sent to the drain API as the reason
    source: str  # who sets it
    kind: Literal["taint", "condition", "unschedulable"]
    key: str  # taint key or condition type ("" for unschedulable)
    urgency: Urgency
    value: Optional[str] = None  # taint value that must match; None: any
    notice_s: Optional[float] = None  # typical time left after the signal appears; None: unknown


SIGNALS: tuple[TerminationSignal, ...] = (
    # AWS: aws-node-termination-handler (IMDS or queue mode) taints the node on each event.
    TerminationSignal("aws-spot-interruption", "aws-node-termination-handler", "taint",
                      "aws-node-termination-handler/spot-itn", Urgency.TERMINATING, notice_s=120),
    TerminationSignal("aws-asg-termination", "aws-node-termination-handler", "taint",
                      "aws-node-termination-handler/asg-lifecycle-termination", Urgency.TERMINATING),
    TerminationSignal("aws-scheduled-maintenance", "aws-node-termination-handler", "taint",
                      "aws-node-termination-handler/scheduled-maintenance", Urgency.TERMINATING),
    TerminationSignal("aws-rebalance-recommendation", "aws-node-termination-handler", "taint",
                      "aws-node-termination-handler/rebalance-recommendation", Urgency.ADVISORY),
    # Karpenter v1 taints a node it is about to disrupt (consolidation, drift, expiry, spot
    # interruption); before v1 the key was karpenter.sh/disruption with value "disrupting".
    TerminationSignal("karpenter-disrupted", "karpenter", "taint", "karpenter.sh/disrupted", Urgency.TERMINATING),
    TerminationSignal("karpenter-disrupting", "karpenter (< v1)", "taint", "karpenter.sh/disruption",
                      Urgency.TERMINATING, value="disrupting"),
    # Cluster Autoscaler, just before it deletes a node it scaled down.
    TerminationSignal("cluster-autoscaler-scale-down", "cluster-autoscaler", "taint",
                      "ToBeDeletedByClusterAutoscaler", Urgency.TERMINATING),
    # GKE: spot/preemptible VMs and maintenance; Google's termination handler taints the node,
    # and GKE reports the impending termination as a node condition.
    TerminationSignal("gke-impending-termination", "gke", "taint", "cloud.google.com/impending-node-termination",
                      Urgency.TERMINATING, notice_s=30),
    TerminationSignal("gke-impending-termination-condition", "gke", "condition", "ImpendingNodeTermination",
                      Urgency.TERMINATING, notice_s=30),
    # AKS: node-problem-detector's scheduled-events conditions (spot eviction, maintenance).
    TerminationSignal("aks-preempt-scheduled", "aks node-problem-detector", "condition", "PreemptScheduled",
                      Urgency.TERMINATING, notice_s=30),
    TerminationSignal("aks-terminate-scheduled", "aks node-problem-detector", "condition", "TerminateScheduled",
                      Urgency.TERMINATING),
    TerminationSignal("aks-freeze-scheduled", "aks node-problem-detector", "condition", "FreezeScheduled",
                      Urgency.ADVISORY),
    # Kubernetes itself: the node was cordoned (kubectl drain, a node upgrade), or the kubelet
    # is shutting down (graceful node shutdown marks the node out of service).
    TerminationSignal("cordoned", "kubernetes", "unschedulable", "", Urgency.TERMINATING),
    TerminationSignal("out-of-service", "kubernetes", "taint", "node.kubernetes.io/out-of-service", Urgency.TERMINATING),
)


def match(node: Mapping[str, Any], signals: tuple[TerminationSignal, ...] = SIGNALS) -> list[TerminationSignal]:
    """The rows of ``signals`` present on ``node`` (a Node object as JSON), in table order."""
    spec = node.get("spec") or {}
    taints = spec.get("taints") or []
    conditions = (node.get("status") or {}).get("conditions") or []
    true_conditions = {c.get("type") for c in conditions if c.get("status") == "True"}
    found = []
    for s in signals:
        if s.kind == "taint":
            hit = any(t.get("key") == s.key and (s.value is None or t.get("value") == s.value) for t in taints)
        elif s.kind == "condition":
            hit = s.key in true_conditions
        else:
            hit = bool(spec.get("unschedulable"))
        if hit:
            found.append(s)
    return found
