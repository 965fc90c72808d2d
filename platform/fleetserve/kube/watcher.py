"""The spot watcher: Node events in, drains of the Ray nodes on terminating machines out.

Two halves, as the rest of fleetserve splits policy from actuation:

- :func:`decide` is pure: a Node event (the Node as JSON) and the watcher's state in, an
  optional :class:`DrainDecision` and the next state out. It reads the signal table
  (:mod:`fleetserve.kube.signals`) and drains each node once per termination episode.
- :class:`NodeWatcher` is the thin loop: list the Nodes, then watch them with the
  ``kubernetes`` client; for each decision, find this release's Ray pods on the node and hand
  a :class:`~fleetserve.kube.drainer.DrainRequest` to the injected
  :class:`~fleetserve.kube.drainer.Drainer`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

from fleetserve.kube import signals as S
from fleetserve.kube.drainer import DrainError, Drainer, DrainRequest, RayPod

log = logging.getLogger(__name__)

# Event types: the watch protocol's three, plus SYNC for a Node seen in the initial list.
SYNC, ADDED, MODIFIED, DELETED = "SYNC", "ADDED", "MODIFIED", "DELETED"
NODE_EVENTS = frozenset({SYNC, ADDED, MODIFIED, DELETED})


@dataclass(frozen=True)
class WatchState:
    """Nodes drained in their current termination episode (so each is drained once)."""

    drained: frozenset[str] = frozenset()

    def with_drained(self, node: str) -> "WatchState":
        return WatchState(self.drained | {node})

    def without(self, node: str) -> "WatchState":
        return WatchState(self.drained - {node}) if node in self.drained else self


@dataclass(frozen=True)
class DrainDecision:
    node: str
    signals: tuple[str, ...]  # signal names, table order; "node-deleted" for a vanished node
    deadline_s: Optional[float]  # shortest known notice among the signals

    @property
    def reason(self) -> str:
        return self.signals[0]


def decide(event_type: str, node: Mapping[str, Any], state: WatchState, *,
           drain_on_advisory: bool = False) -> tuple[Optional[DrainDecision], WatchState]:
    """What to do about one Node event. Drains a node the first time it shows a termination
    signal; forgets it when the signals clear (an uncordon) or the Node is deleted, so a later
    episode drains again. A Node deleted without any signal seen is drained then (its replicas
    are gone; the platform must stop routing to them)."""
    if event_type not in NODE_EVENTS:
        return None, state
    name = (node.get("metadata") or {}).get("name")
    if not name:
        return None, state
    if event_type == DELETED:
        if name in state.drained:
            return None, state.without(name)
        return DrainDecision(name, ("node-deleted",), 0.0), state
    found = [s for s in S.match(node) if s.urgency is S.Urgency.TERMINATING or drain_on_advisory]
    if not found:
        return None, state.without(name)
    if name in state.drained:
        return None, state
    notices = [s.notice_s for s in found if s.notice_s is not None]
    decision = DrainDecision(name, tuple(s.name for s in found), min(notices) if notices else None)
    return decision, state.with_drained(name)


PodLister = Callable[[str], list[RayPod]]


@dataclass
class NodeWatcher:
    """Applies :func:`decide` to a live Node watch.

    ``core_api`` is a ``kubernetes.client.CoreV1Api``; ``list_pods(node)`` returns this
    release's Ray pods on a node (see :func:`pod_lister`). A drain that fails is forgotten, so
    the node's next event retries it."""

    core_api: Any
    drainer: Drainer
    list_pods: PodLister
    drain_on_advisory: bool = False
    watch_timeout_s: int = 300
    state: WatchState = field(default_factory=WatchState)

    def handle(self, event_type: str, node: Mapping[str, Any]) -> Optional[DrainRequest]:
        """One event; returns the drain request sent, if any."""
        decision, self.state = decide(event_type, node, self.state, drain_on_advisory=self.drain_on_advisory)
        if decision is None:
            return None
        pods = tuple(self.list_pods(decision.node))
        if not pods:
            log.info("node %s is terminating (%s) but runs no Ray pod of this release", decision.node, decision.reason)
            return None
        request = DrainRequest(decision.node, decision.reason, decision.signals, decision.deadline_s, pods)
        try:
            self.drainer.drain(request)
        except DrainError as exc:
            log.error("%s; will retry on the node's next event", exc)
            self.state = self.state.without(decision.node)
            return None
        return request

    def run_once(self) -> None:
        """List every Node (to catch signals set while nobody watched), then follow the watch
        from that list's resourceVersion until the server ends it (``watch_timeout_s``)."""
        listing = json.loads(self.core_api.list_node(_preload_content=False).data)
        for node in listing.get("items", []):
            self.handle(SYNC, node)
        for event_type, obj in self._watch(listing["metadata"]["resourceVersion"]):
            self.handle(event_type, obj)

    def _watch(self, resource_version: str) -> Iterator[tuple[str, dict]]:
        """The watch protocol read directly: one JSON event per line, Nodes kept as JSON (what
        decide() reads; no model objects built for every heartbeat). ``kubernetes.watch.Watch``
        is not used: without deserializing it fails on ERROR events (client 37)."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        resp = self.core_api.list_node(watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                                       timeout_seconds=self.watch_timeout_s, _preload_content=False)
        try:
            for line in iter_resp_lines(resp):
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    # 410 Gone: the resourceVersion expired; the caller relists.
                    raise ApiException(status=status.get("code"), reason=f"{status.get('reason')}: {status.get('message')}")
                yield event.get("type", ""), event.get("object") or {}
        finally:
            resp.release_conn()

    def run_forever(self, sleep: Callable[[float], None], max_backoff_s: float = 30.0) -> None:
        """``run_once`` again and again; API errors back off exponentially (``sleep`` injected)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        backoff = 1.0
        while True:
            try:
                self.run_once()
                backoff = 1.0
            except (ApiException, HTTPError, OSError) as exc:
                # 410 Gone (the resourceVersion expired) lands here too: the next run relists.
                log.warning("node watch ended: %s; again in %.0fs", exc, backoff)
                sleep(backoff)
                backoff = min(max_backoff_s, backoff * 2)


def pod_lister(core_api: Any, namespace: str, label_selector: str) -> PodLister:
    """Ray pods matching ``label_selector`` in ``namespace`` on a given node (RBAC: list pods)."""

    def list_pods(node: str) -> list[RayPod]:
        resp = core_api.list_namespaced_pod(namespace, label_selector=label_selector,
                                            field_selector=f"spec.nodeName={node}", _preload_content=False)
        items = json.loads(resp.data).get("items", [])
        return [RayPod(p["metadata"]["name"], (p.get("status") or {}).get("podIP")) for p in items]

    return list_pods
