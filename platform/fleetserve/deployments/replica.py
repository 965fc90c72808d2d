"""The model replica: a Ray Serve deployment class hosting ONE engine.

- ``generate`` is an async generator, so results stream back through the DeploymentHandle
  (``handle.options(stream=True)``); a cancelled call (client gone) aborts the engine request.
  Each item carries everything the engine had produced for the request when this generator
  asked for it (``engine.process.pacing``; vLLM's output collector does the same), so a lagging
  replica loop sends one Ray object per pull rather than one per token. Streams are paced
  at ``stream_interval_s`` (the model's floor or the request's class, whichever is larger):
  by the engine itself when its ``capabilities().paces_streams`` (native), else by ``pacing.paced`` here.
- ``check_health`` is Serve's health probe, delegated to the engine loop: a dead or wedged
  loop marks the replica unhealthy and Serve replaces it.
- ``record_routing_stats`` is pushed by Serve to every router of this deployment; the
  :mod:`fleetserve.router.replica_router` routes on it. It is :class:`ReplicaStats` as a
  dict: the one place the replica side converts it.
- ``__del__`` (Serve's graceful shutdown hook) drains: admission stops at once; in drain
  mode ``migrate`` (the default) in-flight requests are handed back at once, in ``finish``
  mode they get ``drain_timeout_s`` to finish. ``migrate`` falls back to ``finish`` when the
  whole application is going away or no other replica of the version runs
  (:mod:`fleetserve.deployments.shutdown_drain`).
- ``set_draining`` is the admin/node drain: the replica stops admitting and, in ``migrate``
  mode, ends each in-flight stream with :class:`~fleetserve.errors.RequestMigrated` (over the
  link a ``Migrate`` frame); the ingress resumes it on another replica from the tokens the
  client already has (``api/resume.py``) instead of waiting for it here.
- ``set_standby`` parks the replica in the warm pool (out of routing, engine asleep: its KV
  cache released, weights kept) and wakes it again; :mod:`fleetserve.deployments.standby`.
- With ``link=True`` the same ``generate`` is also served over the replica link
  (:mod:`fleetserve.deployments.replica_link`); its address goes out in the routing stats
  (``"link"``), which is how the ingress finds it.

The class is plain; :mod:`fleetserve.application.build` applies ``serve.deployment`` with
resources and limits from the config, and tests may construct it with any engine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import AsyncIterator, Callable, Optional

from fleetserve.config import ModelConfig
from fleetserve.engine.runtime.heap_freeze import freeze_startup_heap
from fleetserve.deployments.replica_link import ReplicaLinkServer, cluster_secret
from fleetserve.deployments.fault_injection import FaultInjector
from fleetserve.deployments.replica_metrics import ReplicaMetrics
from fleetserve.deployments.replica_stats import DrainAck, ReplicaStats, StandbyAck
from fleetserve.deployments.shutdown_drain import serve_view, shutdown_mode
from fleetserve.deployments.standby import node_capacity_type, park, wake
from fleetserve.engine.process.pacing import paced_generate
from fleetserve.engine.protocol import FINISH_ERROR, EngineProtocol, GenerateRequest, LoraRef, ModelInfo, RequestOutput
from fleetserve.errors import RequestMigrated, ServiceUnavailableError
from fleetserve.metrics.server import ListenerSettings

logger = logging.getLogger(__name__)

EngineFactory = Callable[[ModelConfig], EngineProtocol]


class ModelReplica:
    async def __init__(self, model: dict, engine_factory: Optional[EngineFactory] = None, link: bool = False,
                       verify_checkpoint: Optional[Callable[[], None]] = None,
                       metrics: Optional[ListenerSettings] = None):
        """``verify_checkpoint``: raises when the checkpoint is not the one registered for this
        version (``canary.versions.verify``, injected by the application): the replica then
        refuses to start, and the version is blocked. ``metrics``: where this replica serves
        its engine's series (None: recorded, not served)."""
        from fleetserve.deployments.engine_factory import build_engine

        self._faults, engine_args = FaultInjector.split_args(model.get("engine_args", {}))  # test only
        self._cfg = ModelConfig.model_validate({**model, "engine_args": engine_args})
        if verify_checkpoint is not None:
            verify_checkpoint()  # before any weight is loaded
        self._engine = (engine_factory or build_engine)(self._cfg)
        self._draining = False
        self._in_flight = 0
        self._live: set[str] = set()  # engine request ids streaming now (for preempt_job)
        self._standby = False
        self._migrating: set[str] = set()  # live ids handed back by a drain: their streams end with RequestMigrated
        self._replica_id = _replica_id()
        self._node_id, self._node_ip = _node_id(), _node_ip()
        self._capacity_type = node_capacity_type()
        await self._engine.start()
        self._metrics = ReplicaMetrics(self._cfg, self._replica_id, self._engine, metrics)
        self._link: Optional[ReplicaLinkServer] = None
        if link:
            self._link = ReplicaLinkServer(self.generate, cluster_secret(), host=_node_ip())
            await self._link.start()
        freeze_startup_heap()  # the model and runtime heap is never scanned by the GC again
        logger.info("replica %s of %s ready (engine=%s)", self._replica_id, self._cfg.name, self._cfg.engine)

    async def generate(self, request: GenerateRequest, prefix_key: Optional[str] = None) -> AsyncIterator[RequestOutput]:
        """Stream the engine's incremental outputs. ``prefix_key`` is read by the router only."""
        if self._draining or self._standby:
            raise ServiceUnavailableError("replica is draining" if self._draining else "replica is a warm standby",
                                          retry_after_s=1.0)
        if self._faults.should_fail():
            yield RequestOutput(request.request_id, finished=True, finish_reason=FINISH_ERROR,
                                error="injected fault (engine_args.fail_fraction, test only)")
            return
        self._in_flight += 1
        self._live.add(request.request_id)
        finished = False
        interval = max(request.stream_interval_s, self._cfg.stream_interval_s)
        if interval != request.stream_interval_s:
            request = replace(request, stream_interval_s=interval)
        stream = paced_generate(self._engine, request)  # vLLM: paced here; native: by the engine
        timer, last, failed = self._metrics.start_request(), None, False
        try:
            async for out in stream:
                if request.request_id in self._migrating:  # what is not yet sent is regenerated elsewhere
                    raise RequestMigrated(f"replica {self._replica_id} is draining", replica=self._replica_id)
                finished, last = out.finished, out
                self._metrics.on_output(timer, out)
                yield out
        except Exception:
            failed = True  # the engine failed it; a cancelled caller (GeneratorExit) is an abort
            raise
        finally:
            self._in_flight -= 1
            self._live.discard(request.request_id)
            self._migrating.discard(request.request_id)
            self._metrics.finish(timer, last, finished, failed)
            if not finished:  # caller cancelled: free the engine's slot and KV blocks now
                await self._engine.abort(request.request_id)
                await stream.aclose()  # a paced stream's pending pull ends with it

    async def model_info(self) -> ModelInfo:
        return self._engine.model_info()

    async def stats(self) -> dict:
        return self.replica_stats().to_dict()

    async def preempt(self, request_id: str) -> bool:
        return await self._engine.preempt(request_id)

    async def preempt_job(self, job_id: str, target_replica: Optional[str] = None) -> bool:
        """Preempt every engine request of one API request (ids ``job_id`` or ``job_id-<choice>``).

        ``target_replica`` is read by the replica router only (it pins the call to that
        replica); the fleet scheduler uses it to reach the replica running the job.
        """
        ids = [rid for rid in self._live if rid == job_id or rid.startswith(job_id + "-")]
        results = [await self._engine.preempt(rid) for rid in ids]
        return any(results)

    async def check_health(self) -> None:
        await self._engine.check_health()

    # LoRA adapters (the admin API pins each call to one replica with ``target_replica``, read
    # by the replica router; a call that reached another replica changes nothing here).
    async def add_adapter(self, ref: LoraRef, target_replica: Optional[str] = None) -> dict:
        if target_replica is not None and target_replica != self._replica_id:
            return {"replica": self._replica_id, "applied": False}
        return {"replica": self._replica_id, "applied": True, **await self._engine.add_adapter(ref)}

    async def remove_adapter(self, name: str, target_replica: Optional[str] = None) -> dict:
        if target_replica is not None and target_replica != self._replica_id:
            return {"replica": self._replica_id, "applied": False}
        return {"replica": self._replica_id, "applied": True, "evicted": await self._engine.remove_adapter(name)}

    async def list_adapters(self, target_replica: Optional[str] = None) -> dict:
        return {"replica": self._replica_id, "adapters": await self._engine.list_adapters()}

    def record_routing_stats(self) -> dict:
        return self.replica_stats().to_dict()

    def replica_stats(self) -> ReplicaStats:
        s = self._engine.stats()
        return ReplicaStats(
            replica=self._replica_id,
            num_waiting=s.num_waiting,
            num_running=s.num_running,
            kv_usage=s.kv_usage,
            healthy=s.healthy,
            draining=self._draining or s.draining,
            in_flight=self._in_flight,
            link=self._link.address if self._link is not None else None,
            ts=time.time(),
            node_id=self._node_id,
            node_ip=self._node_ip,
            standby=self._standby,
            capacity_type=self._capacity_type,
            metrics=self._metrics.address,
        )

    async def set_draining(self, draining: bool, target_replica: Optional[str] = None,
                           mode: Optional[str] = None) -> DrainAck:
        """Stop (``True``) or resume (``False``) admitting new requests. Requests in flight
        are handed back to the ingress (``mode`` ``migrate``) or finish here (``finish``);
        None: the model's ``drain_mode``. The admin drain path pins the call with
        ``target_replica`` (read by the replica router); a call that reached another replica
        changes nothing here."""
        if target_replica is not None and target_replica != self._replica_id:
            return DrainAck(self._replica_id, applied=False, draining=self._draining, in_flight=self._in_flight)
        in_flight = self._in_flight
        self._draining = draining
        migrated = await self.migrate_all() if draining and (mode or self._cfg.drain_mode) == "migrate" else 0
        logger.info("replica %s %s (%d in flight, %d handed back)", self._replica_id,
                    "draining" if draining else "resumed", in_flight, migrated)
        return DrainAck(self._replica_id, applied=True, draining=draining, in_flight=in_flight, migrated=migrated)

    async def migrate_all(self) -> int:
        """Hand every in-flight request back to its ingress: its engine request is aborted
        (slot and KV freed now) and its stream ends with RequestMigrated. Returns how many."""
        ids = self._live - self._migrating
        self._migrating |= ids
        for rid in ids:
            await self._engine.abort(rid)
        return len(ids)

    async def set_standby(self, standby: bool, target_replica: Optional[str] = None) -> StandbyAck:
        """Park (``True``: out of routing, then the engine sleeps once empty) or activate
        (``False``: the engine wakes, then the replica rejoins routing). Pinned like set_draining."""
        if target_replica is not None and target_replica != self._replica_id:
            return StandbyAck(self._replica_id, applied=False, standby=self._standby)
        t0 = time.perf_counter()
        if standby:
            self._standby = True  # routers see it with the next stats push; generate refuses meanwhile
            await park(self._engine, lambda: self._in_flight, self._cfg.drain_timeout_s)
        else:
            await wake(self._engine)
            self._standby = self._draining = False
        took = time.perf_counter() - t0
        logger.info("replica %s %s in %.3fs", self._replica_id, "parked" if standby else "activated", took)
        return StandbyAck(self._replica_id, applied=True, standby=standby, seconds=took)

    def record_autoscaling_stats(self) -> dict:
        """Requests in flight here through any transport: Serve counts only its handle calls."""
        s = self._engine.stats()
        return {"in_flight": float(self._in_flight), "kv_usage": float(s.kv_usage)}

    async def __del__(self):
        self._draining = True
        try:
            mode = self._cfg.drain_mode
            if mode == "migrate" and self._live:
                mode = shutdown_mode(mode, await serve_view())  # nowhere to migrate to: finish here
            if mode == "migrate":
                await self.migrate_all()
            left = await self._engine.drain(self._cfg.drain_timeout_s)
            if left:
                logger.warning("replica %s shut down with %d requests unfinished after drain", self._replica_id, left)
        finally:
            await self._engine.shutdown()
            self._metrics.close()
            if self._link is not None:
                await self._link.close()


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # constructed outside Serve (tests)
        return "local"


def _node_id() -> Optional[str]:
    try:
        import ray

        if not ray.is_initialized():  # outside Ray (tests, benches): never start or join a cluster here
            return None
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - no Ray here (tests)
        return None


def _node_ip() -> str:
    """Where other nodes reach this replica (loopback outside a Ray worker)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - no Ray here (tests)
        return "127.0.0.1"
