"""``AsyncEngine``: the native backend behind :class:`EngineProtocol`.

The synchronous :class:`LLMEngine` runs in one dedicated thread (the step loop), so the
asyncio event loop stays responsive while a forward pass runs. Everything that touches the
engine's state is a *command* executed by that thread between steps; outputs of a step go
back to the event loop in one ``call_soon_threadsafe`` call and are fanned out to
per-request asyncio queues. When there is nothing to do the thread waits on a condition
(no busy spin).

New requests are queued apart from other commands: besides between steps, the step thread
also adds them between two layers of a running forward pass, and when one of them is of a
strictly better class than some running request, runs its prefill there as a step of its
own (``LLMEngine.side_step``, at most one per step) before the pass resumes. Its first token
then waits for one layer of the batch's step instead of all of it.

On CPU the step thread runs under SCHED_IDLE (``EngineConfig.step_thread_policy``): model
compute is the one CPU-bound, throughput-oriented job on the node, and the request path
sharing its cores (proxy, ingress, this replica's own event loop) preempts it at once
instead of queueing behind a step.

Streams are paced by ``GenerateRequest.stream_interval_s``: after a request's first output,
the next one is handed out when that interval has passed, merging every token produced
meanwhile (no token lost or repeated), or at once when the request finishes, so neither the
first nor the last token waits. Every output costs a Ray object, an SSE event and a proxy
message downstream; pacing bounds that cost per stream instead of paying it per step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections import deque
from typing import AsyncIterator, Callable, Optional

from fleetserve.clock import Clock
from fleetserve.engine.coalesce import drain_merged
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.llm_engine import LLMEngine, RunnerFactory, default_runner_factory
from fleetserve.engine.protocol import EngineStats, GenerateRequest, ModelInfo, RequestOutput
from fleetserve.engine.step_lane import PriorityLane
from fleetserve.engine.tokenizer import Tokenizer, load_tokenizer
from fleetserve.errors import EngineError, InvalidRequestError, ServiceUnavailableError

log = logging.getLogger(__name__)


def set_current_thread_idle() -> bool:
    """Put the calling thread under SCHED_IDLE (Linux): other runnable threads preempt it at
    once. Threads it starts later (torch's OpenMP team) inherit the policy. False where the
    OS refuses or lacks it (logged; the engine runs at normal priority)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
        return True
    except (AttributeError, OSError) as exc:
        log.warning("engine step thread stays at normal CPU priority: SCHED_IDLE unavailable (%s)", exc)
        return False


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class AsyncEngine:
    """Native engine; see :class:`fleetserve.engine.protocol.EngineProtocol` for the contract.

    One event loop drives it (the one that first calls ``start``/``generate``).
    ``runner_factory`` and ``tokenizer`` are injectable so tests can use a fake runner.
    """

    paces_streams = True  # honours GenerateRequest.stream_interval_s (see the module docstring)

    def __init__(
        self,
        config: EngineConfig,
        runner_factory: Optional[RunnerFactory] = None,
        *,
        tokenizer: Optional[Tokenizer] = None,
        clock: Optional[Clock] = None,
    ):
        self.config = config
        self._runner_factory = runner_factory or default_runner_factory
        self._tokenizer = tokenizer
        self._clock = clock
        self.engine: Optional[LLMEngine] = None
        self._api_tokenizer: Optional[Tokenizer] = None
        self._build_lock = threading.Lock()
        self._cond = threading.Condition()
        self._commands: deque[tuple[Callable, concurrent.futures.Future]] = deque()
        self._adds: list[tuple[GenerateRequest, concurrent.futures.Future]] = []  # new requests
        self._side_ran = False  # a side step ran in the current step's forward pass
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._streams: dict[str, asyncio.Queue] = {}  # touched on the event loop only
        self._finished: set[str] = set()  # streams whose final output is queued (event loop only)
        self._pacers: dict[str, asyncio.Future] = {}  # streams waiting out their interval
        self._idle_waiters: list[asyncio.Event] = []
        self._stopping = False
        self._sleeping = False
        self._draining = False
        self._loop_error: Optional[BaseException] = None
        self.step_thread_idle = False  # whether the step thread runs under SCHED_IDLE
        self._lane: Optional[PriorityLane] = None  # normal-priority thread for isolated prefill steps

    @classmethod
    def from_config(cls, config: Optional[EngineConfig] = None, **kwargs) -> "AsyncEngine":
        """``AsyncEngine.from_config(model=DIR, num_kv_blocks=...)`` or from an EngineConfig."""
        if config is None:
            config = EngineConfig(**kwargs)
        elif kwargs:
            config = EngineConfig(**{**config.model_dump(), **kwargs})
        return cls(config)

    # ---------------------------------------------------------------- lifecycle
    def _ensure_engine(self) -> LLMEngine:
        with self._build_lock:
            if self.engine is None:
                self.engine = LLMEngine(
                    self.config, tokenizer=self._tokenizer, runner_factory=self._runner_factory, clock=self._clock
                )
                # The loop thread decodes with the engine's tokenizer; API-side encoding gets
                # its own instance (HF fast tokenizers are not safe to share across threads).
                fresh = load_tokenizer(self.config.model) if self._tokenizer is None else None
                self._api_tokenizer = fresh or self.engine.tokenizer
            return self.engine

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._ensure_engine)
        if self._thread is None:
            if self.config.step_thread_idle and self.config.isolate_priority_prefill:
                self._lane = PriorityLane(init=self._bind_thread)  # created here: keeps this thread's (normal) policy
            self._thread = threading.Thread(target=self._run, name="fleetserve-engine", daemon=True)
            self._thread.start()

    async def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        if self._lane is not None:
            self._lane.close()
        for rid, queue in list(self._streams.items()):
            queue.put_nowait(RequestOutput(rid, finished=True, finish_reason="abort", error="engine shut down"))
            self._mark_finished(rid)
        if self.engine is not None:
            self.engine.runner.release_kv_cache()

    # ---------------------------------------------------------------- the loop thread
    def _run(self) -> None:
        engine = self.engine
        self._bind_thread()
        if self.config.step_thread_idle:
            self.step_thread_idle = set_current_thread_idle()
        while True:
            with self._cond:
                while not self._stopping and not self._commands and not self._adds and not self._has_work():
                    self._cond.wait()
                if self._stopping:
                    break
                commands = list(self._commands)
                self._commands.clear()
                adds, self._adds = self._adds, []
            self._add_requests(adds)  # before commands: an abort never precedes its request's add
            for fn, future in commands:
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                    future.set_exception(exc)
            if not self._has_work():
                self._notify_idle()
                continue
            self._side_ran = False
            hook = self._between_layers if engine.supports_side_steps else None
            try:
                if self.step_thread_idle and self._lane is not None and engine.scheduler.next_step_isolated():
                    outputs = self._lane.run(engine.step)  # a first token of a higher class: normal priority
                else:
                    outputs = engine.step(hook)
            except Exception as exc:  # noqa: BLE001 - the loop must survive a bad step
                log.exception("engine step failed; failing the in-flight requests")
                outputs = engine.fail_all(f"{type(exc).__name__}: {exc}")
            if outputs:
                self._deliver(outputs)
            if not self._has_work():
                self._notify_idle()
        with self._cond:  # stopped: nobody will run what is still queued
            pending = [f for _, f in self._commands] + [f for _, f in self._adds]
            self._commands.clear()
            self._adds = []
        for future in pending:
            future.set_exception(ServiceUnavailableError("engine shut down"))

    def _add_requests(self, adds: list[tuple[GenerateRequest, concurrent.futures.Future]]) -> None:
        for request, future in adds:
            try:
                future.set_result(self.engine.add_request(request))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting generate()
                future.set_exception(exc)

    def _between_layers(self) -> None:
        """Called by the step thread between layers of a step's forward pass: add the
        requests that arrived meanwhile and, once per step, run a side prefill for those of
        a better class than some running request (on the normal-priority lane if any)."""
        if not self._adds or self._side_ran:
            return
        with self._cond:
            adds, self._adds = self._adds, []

        def side() -> list[RequestOutput]:
            self._add_requests(adds)
            return self.engine.side_step()

        try:
            outputs = self._lane.run(side) if self._lane is not None else side()
        except Exception:  # noqa: BLE001 - the lane is closed (shutdown): the paused step goes on
            log.exception("side prefill could not run")
            with self._cond:
                self._adds[:0] = [a for a in adds if not a[1].done()]
            return
        if outputs:
            self._side_ran = True
            self._deliver(outputs)

    def _bind_thread(self) -> None:
        """Per-thread torch settings for a thread that runs steps (OpenMP's team size is a
        per-thread setting)."""
        if self.config.num_threads and self.config.device == "cpu":
            import torch

            torch.set_num_threads(self.config.num_threads)

    def _has_work(self) -> bool:
        return not self._sleeping and self.engine.has_unfinished()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._dispatch, outputs)
        except RuntimeError:  # event loop closed: nobody is listening any more
            pass

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            queue = self._streams.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)
                if out.finished:
                    self._mark_finished(out.request_id)

    def _mark_finished(self, rid: str) -> None:
        """The final output of ``rid`` is queued: a paced stream hands it out now."""
        self._finished.add(rid)
        pacer = self._pacers.pop(rid, None)
        if pacer is not None and not pacer.done():
            pacer.set_result(None)

    async def _pace(self, rid: str, interval: float) -> None:
        """Wait ``interval`` seconds, or less if the request finishes meanwhile."""
        if rid in self._finished:
            return
        loop = asyncio.get_running_loop()
        pacer = loop.create_future()
        self._pacers[rid] = pacer
        timer = loop.call_later(interval, _resolve, pacer)
        try:
            await pacer
        finally:
            timer.cancel()
            if self._pacers.get(rid) is pacer:
                del self._pacers[rid]

    def _notify_idle(self) -> None:
        if self._idle_waiters and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake_idle_waiters)
            except RuntimeError:
                pass

    def _wake_idle_waiters(self) -> None:
        for event in self._idle_waiters:
            event.set()

    def _submit(self, fn: Callable) -> concurrent.futures.Future:
        if self._thread is None or not self._thread.is_alive():
            raise ServiceUnavailableError("engine loop is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._commands.append((fn, future))
            self._cond.notify()
        return future

    def _submit_add(self, request: GenerateRequest) -> concurrent.futures.Future:
        if self._thread is None or not self._thread.is_alive():
            raise ServiceUnavailableError("engine loop is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._adds.append((request, future))
            self._cond.notify()
        return future

    async def _call(self, fn: Callable):
        return await asyncio.wrap_future(self._submit(fn))

    # ---------------------------------------------------------------- requests
    async def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        await self.start()
        if self._sleeping:
            raise ServiceUnavailableError("engine is asleep")
        if self._draining or self._stopping:
            raise ServiceUnavailableError("engine is draining")
        rid = request.request_id
        if rid in self._streams:
            raise InvalidRequestError(f"request_id {rid!r} is already in flight", field="request_id")
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = queue
        interval = request.stream_interval_s
        finished = False
        try:
            # Validation runs in the loop thread (it owns the tokenizer) and raises here,
            # before anything is yielded. Waiting costs no latency: the request could not
            # be scheduled before the next step anyway.
            await asyncio.wrap_future(self._submit_add(request))
            while True:
                # A consumer slower than the engine gets everything already produced in
                # one output (one Ray object / SSE event instead of one per token).
                out = drain_merged(await queue.get(), queue)
                finished = out.finished
                yield out
                if finished:
                    return
                if interval > 0:
                    await self._pace(rid, interval)
        except InvalidRequestError:
            finished = True  # never entered the engine
            raise
        finally:
            self._streams.pop(rid, None)
            self._finished.discard(rid)
            if not finished and not self._stopping:
                # Consumer went away (cancelled or closed the stream): stop generating.
                try:
                    self._submit(lambda: self.engine.abort(rid))
                except ServiceUnavailableError:
                    pass

    async def abort(self, request_id: str) -> None:
        if self._thread is None:
            return
        out = await self._call(lambda: self.engine.abort(request_id))
        if out is not None:
            self._dispatch([out])

    async def preempt(self, request_id: str) -> bool:
        if self._thread is None:
            return False
        return await self._call(lambda: self.engine.preempt(request_id))

    # ---------------------------------------------------------------- state
    def stats(self) -> EngineStats:
        if self.engine is None:
            return EngineStats(healthy=self._loop_error is None, sleeping=self._sleeping, draining=self._draining)
        st = self.engine.stats()
        st.healthy = self._thread is not None and self._thread.is_alive()
        st.sleeping = self._sleeping
        st.draining = self._draining
        return st

    async def check_health(self) -> None:
        if self._thread is None:
            raise EngineError("engine not started")
        if not self._thread.is_alive():
            raise EngineError("engine loop thread died")

    async def sleep(self) -> None:
        """Release the KV memory. Unfinished requests stay queued and are recomputed after
        ``wake_up``; new requests are rejected meanwhile."""
        await self.start()
        if self._sleeping:
            return

        def _sleep():
            self._sleeping = True
            self.engine.release_kv()

        await self._call(_sleep)

    async def wake_up(self) -> None:
        if not self._sleeping:
            return

        def _wake():
            self.engine.restore_kv()
            self._sleeping = False

        await self._call(_wake)

    async def drain(self, timeout_s: float) -> int:
        """Stop admitting; wait up to ``timeout_s`` for in-flight requests; return how many
        are still unfinished."""
        self._draining = True
        if self._thread is None:
            return 0
        event = asyncio.Event()
        self._idle_waiters.append(event)
        try:
            if await self._call(lambda: self.engine.has_unfinished()):
                try:
                    await asyncio.wait_for(event.wait(), timeout_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._idle_waiters.remove(event)
        return await self._call(lambda: len(self.engine.scheduler.requests))

    def model_info(self) -> ModelInfo:
        engine = self._ensure_engine()
        tok = self._api_tokenizer
        return ModelInfo(
            name=os.path.basename(os.path.normpath(self.config.model)),
            max_model_len=engine.max_model_len,
            vocab_size=engine.runner.vocab_size,
            eos_token_ids=list(engine.eos_token_ids),
            has_chat_template=bool(tok and tok.has_chat_template),
        )

    def _tok(self) -> Tokenizer:
        self._ensure_engine()
        if self._api_tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer", field="prompt")
        return self._api_tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tok().encode(text)

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        return self._tok().apply_chat_template(messages)
