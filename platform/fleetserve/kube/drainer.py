"""How the spot watcher asks the platform to drain: the :class:`Drainer` protocol and its real
implementation, a call to fleetserve's admin API.

``POST /admin/nodes/{node}/drain`` (Bearer admin key) with a JSON body::

    {"source": "kubernetes", "reason": "aws-spot-interruption", "signals": [...],
     "deadline_s": 120 | null, "pods": [{"name": "...", "ip": "10.0.3.7"}, ...]}

``node`` is the Kubernetes node name; ``pods`` are the release's Ray pods on it, whose IPs are
their Ray node IPs, so the server can map them to Ray node ids. The server side is
``fleetserve.api.drain_routes``: the replicas on that node stop taking new requests and finish
the ones they serve (moving them elsewhere before the deadline, migration, is not built yet).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Optional, Protocol
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayPod:
    name: str
    ip: Optional[str]


@dataclass(frozen=True)
class DrainRequest:
    node: str
    reason: str
    signals: tuple[str, ...]
    deadline_s: Optional[float]
    pods: tuple[RayPod, ...] = field(default_factory=tuple)

    def body(self) -> dict:
        return {"source": "kubernetes", "reason": self.reason, "signals": list(self.signals),
                "deadline_s": self.deadline_s, "pods": [asdict(p) for p in self.pods]}


class DrainError(Exception):
    """The platform did not accept the drain (unreachable, or an error status)."""


class Drainer(Protocol):
    """Drains the Ray node(s) on one Kubernetes node through the platform's drain path.

    ``drain`` returns once the platform has accepted the request (replicas stop taking new
    requests and move; it does not wait for them to finish) and raises :class:`DrainError`
    otherwise. It must be safe to call twice for the same node."""

    def drain(self, request: DrainRequest) -> None: ...


class AdminApiDrainer:
    """:class:`Drainer` over fleetserve's admin API (``server.admin_key`` as Bearer)."""

    def __init__(self, base_url: str, admin_key: str, client: Optional[httpx.Client] = None, timeout_s: float = 10.0):
        self._url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_key}"}
        self._client = client or httpx.Client(timeout=timeout_s)

    def drain(self, request: DrainRequest) -> None:
        url = f"{self._url}/admin/nodes/{quote(request.node, safe='')}/drain"
        try:
            resp = self._client.post(url, json=request.body(), headers=self._headers)
        except httpx.HTTPError as exc:
            raise DrainError(f"cannot reach {self._url}: {exc}") from exc
        if resp.status_code >= 300:
            raise DrainError(f"drain of node {request.node} refused: HTTP {resp.status_code} {resp.text[:200]}")
        log.info("drain of node %s accepted (%s)", request.node, request.reason)
