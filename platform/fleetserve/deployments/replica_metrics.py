"""A model replica's own metrics: its engine's ``vllm:*`` series on its own metrics listener.

Every replica is scraped individually (not through the ingress), so a dashboard sees each
engine's load and latency as that engine reports it. The native engine's series are written
by :class:`fleetserve.metrics.engine_metrics.EngineMetrics` from its stats and the outputs
the replica streams; ``engine: vllm`` exports vLLM's own stat logger output, mirrored with
fleetserve's version/replica labels (:class:`fleetserve.metrics.engine_metrics.VllmMirror`).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from prometheus_client import CollectorRegistry

from fleetserve.config import ModelConfig
from fleetserve.engine.protocol import EngineProtocol, RequestOutput
from fleetserve.metrics.engine_metrics import EngineLoad, EngineMetrics, RequestTimer, VllmMirror
from fleetserve.metrics.server import ListenerSettings, MetricsServer

log = logging.getLogger(__name__)


class ReplicaMetrics:
    """Records one replica's requests; serves them when ``settings`` is given."""

    def __init__(self, cfg: ModelConfig, replica_id: str, engine: EngineProtocol,
                 settings: Optional[ListenerSettings] = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._engine = engine
        self._own: Optional[EngineMetrics] = None
        if cfg.engine == "vllm":  # vLLM writes these names itself
            self.registry.register(VllmMirror({"version": cfg.version, "replica": replica_id}))
        else:
            self._own = EngineMetrics(self.registry, cfg.name, cfg.version, replica_id)
        self._server = MetricsServer.start(self.registry, settings, self.refresh) if settings is not None else None

    @property
    def address(self) -> Optional[str]:
        """``host:port`` of this replica's metrics listener (None: not served)."""
        return self._server.address if self._server is not None else None

    def refresh(self) -> None:
        """Load gauges as of now (called before each scrape)."""
        if self._own is None:
            return
        s = self._engine.stats()
        self._own.set_load(EngineLoad(s.num_waiting, s.num_running, s.kv_usage, s.num_preemptions))

    def start_request(self) -> RequestTimer:
        return RequestTimer(arrival=time.monotonic())

    def on_output(self, timer: RequestTimer, out: RequestOutput) -> None:
        timer.on_output(time.monotonic(), len(out.token_ids_delta) or (1 if out.text_delta else 0))

    def finish(self, timer: RequestTimer, last: Optional[RequestOutput], finished: bool, failed: bool = False) -> None:
        """``finished``: the engine's last output said so; ``failed``: the stream raised."""
        if self._own is None:
            return
        if failed or (finished and (last is None or last.error is not None)):
            reason: Optional[str] = "error"
        else:
            reason = last.finish_reason if finished and last is not None else "abort"
        prompt = last.prompt_tokens if last is not None else 0
        self._own.observe_finished(timer, time.monotonic(), reason, prompt)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
