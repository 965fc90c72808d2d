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
own (``LLMEngine.side_step``, at most ``max_side_prefills_per_step`` per step) before the pass resumes. Its first token
then waits for one layer of the batch's step instead of all of it.

On CPU the step thread runs under SCHED_IDLE (``EngineConfig.step_thread_policy``): model
compute is the one CPU-bound, throughput-oriented job on the node, and the request path
sharing its cores (proxy, ingress, this replica's own event loop) preempts it at once
instead of queueing behind a step.

Streams, pacing and the control calls live in :class:`fleetserve.engine.process.front.EngineFront`;
this class is its in-process transport and the step loop itself, which
:mod:`fleetserve.engine.process.core_process` also runs in a child process (``ProcessEngine``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections import deque
from functools import partial
from typing import Callable, Optional

from fleetserve.clock import Clock
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.process.front import EngineFront
from fleetserve.engine.core.llm_engine import LLMEngine, RunnerFactory, default_runner_factory
from fleetserve.engine.protocol import EngineStats, GenerateRequest, LoraRef, ModelInfo, RequestOutput
from fleetserve.engine.runtime.priority_lane import PriorityLane
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


class AsyncEngine(EngineFront):
    """Native engine; see :class:`fleetserve.engine.protocol.EngineProtocol` for the contract.

    One event loop drives it (the one that first calls ``start``/``generate``).
    ``runner_factory`` and ``tokenizer`` are injectable so tests can use a fake runner.
    """

    def __init__(
        self,
        config: EngineConfig,
        runner_factory: Optional[RunnerFactory] = None,
        *,
        tokenizer: Optional[Tokenizer] = None,
        clock: Optional[Clock] = None,
    ):
        super().__init__()
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
        self._side_runs = 0  # side steps run in the current step's forward pass
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
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
        self._end_streams("engine shut down")
        if self.engine is not None:
            self.engine.runner.release_kv_cache()

    # ---------------------------------------------------------------- the loop thread
    def _run(self) -> None:
        engine = self.engine
        self._bind_thread()
        if self.config.step_thread_idle:
            self.step_thread_idle = set_current_thread_idle()
        while True:
            work = self._take_work()
            if work is None:
                break
            adds, commands = work
            self._add_requests(adds)  # before commands: an abort never precedes its request's add
            for fn, future in commands:
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                    future.set_exception(exc)
            if not self._has_work():
                self._notify_idle()
                continue
            self._side_runs = 0
            hook = self._between_layers if engine.supports_side_steps else None
            try:
                if self.step_thread_idle and self._lane is not None and engine.scheduler.next_step_isolated():
                    # A first token of a higher class: stepped and delivered at normal priority.
                    self._lane.run(partial(self._run_and_deliver, engine.step))
                else:
                    self._deliver(engine.step(hook))  # also when empty: a transport that holds outputs back checks them per step
            except Exception as exc:  # noqa: BLE001 - the loop must survive a bad step
                log.exception("engine step failed; failing the in-flight requests")
                self._deliver(engine.fail_all(f"{type(exc).__name__}: {exc}"))
            self._handed_over()
            if not self._has_work():
                self._notify_idle()
        with self._cond:  # stopped: nobody will run what is still queued
            pending = [f for _, f in self._commands] + [f for _, f in self._adds]
            self._commands.clear()
            self._adds = []
        for future in pending:
            future.set_exception(ServiceUnavailableError("engine shut down"))

    def _take_work(self) -> Optional[tuple[list, list]]:
        """Wait until there is something to do; take the queued adds and commands.
        None once the engine is stopping."""
        with self._cond:
            while not self._stopping and not self._commands and not self._adds and not self._has_work():
                self._cond.wait()
            return self._take_queued()

    def _take_queued(self) -> Optional[tuple[list, list]]:
        """Empty the queues: ``(adds, commands)``; None once the engine is stopping."""
        if self._stopping:
            return None
        commands = list(self._commands)
        self._commands.clear()
        adds, self._adds = self._adds, []
        return adds, commands

    def _poll_inbox(self) -> None:
        """Take in requests that arrived since the last look (the in-process transport
        queues them directly; a child process reads its pipe here)."""

    def _add_requests(self, adds: list[tuple[GenerateRequest, concurrent.futures.Future]]) -> None:
        for request, future in adds:
            try:
                future.set_result(self.engine.add_request(request))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting generate()
                future.set_exception(exc)

    def _between_layers(self) -> None:
        """Called by the step thread between layers of a step's forward pass: add the
        requests that arrived meanwhile and, up to ``max_side_prefills_per_step`` times per step,
        run a side prefill for those of a better class than some running request (on the
        normal-priority lane if any)."""
        if self._side_runs >= self.config.max_side_prefills_per_step:
            self._handed_over()
            return
        self._poll_inbox()
        if not self._adds:
            self._handed_over()
            return
        with self._cond:
            adds, self._adds = self._adds, []

        def side() -> list[RequestOutput]:
            self._add_requests(adds)
            outputs = self.engine.side_step()
            if outputs:
                self._deliver(outputs)
            return outputs

        try:
            outputs = self._lane.run(side) if self._lane is not None else side()
        except Exception:  # noqa: BLE001 - the lane is closed (shutdown): the paused step goes on
            log.exception("side prefill could not run")
            with self._cond:
                self._adds[:0] = [a for a in adds if not a[1].done()]
            return
        finally:
            self._handed_over()
        if outputs:
            self._side_runs += 1

    def _handed_over(self) -> None:
        """Called by the step thread at each pause point and after each step, once what had
        arrived is taken in and, for a higher class, its step has run (the engine process
        drops its step thread back under SCHED_IDLE here; see runtime.thread_priority)."""

    def _run_and_deliver(self, step: Callable[[], list[RequestOutput]]) -> None:
        """Run ``step`` and deliver its outputs on the calling thread. On the lane, a
        higher-class request's first token leaves at normal priority: handing it back to the
        SCHED_IDLE step thread to send would queue it behind every runnable thread on the node
        (measured under the overload bench: up to 5-7 ms)."""
        self._deliver(step())

    def _bind_thread(self) -> None:
        """Per-thread torch settings for a thread that runs steps (OpenMP's team size is a
        per-thread setting)."""
        if self.config.num_threads and self.config.device == "cpu":
            import torch

            torch.set_num_threads(self.config.num_threads)

    def _has_work(self) -> bool:
        return not self._sleeping and self.engine.has_unfinished()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        if not outputs:
            return
        try:
            self._loop.call_soon_threadsafe(self._dispatch, outputs)
        except RuntimeError:  # event loop closed: nobody is listening any more
            pass

    def _notify_idle(self) -> None:
        if self._idle_waiters and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake_idle_waiters)
            except RuntimeError:
                pass

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

    # ---------------------------------------------------------------- EngineFront transport
    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def _enqueue_add(self, request: GenerateRequest) -> None:
        await asyncio.wrap_future(self._submit_add(request))

    async def _call_op(self, name: str, *args):
        return await self._call(lambda: self._op(name, *args))

    def _abort_soon(self, request_id: str) -> None:
        try:
            self._submit(lambda: self.engine.abort(request_id))
        except ServiceUnavailableError:
            pass

    # ---------------------------------------------------------------- operations (step thread)
    def _op(self, name: str, *args):
        """Run the engine-state operation ``name`` (``_op_<name>``); called by the step
        thread between steps. By name, so a child process can receive it over a pipe."""
        fn = getattr(self, "_op_" + name, None)
        if fn is None:
            raise ValueError(f"unknown engine operation {name!r}")
        return fn(*args)

    def _op_abort(self, request_id: str) -> Optional[RequestOutput]:
        return self.engine.abort(request_id)

    def _op_preempt(self, request_id: str) -> bool:
        return self.engine.preempt(request_id)

    def _op_has_unfinished(self) -> bool:
        return self.engine.has_unfinished()

    def _op_num_requests(self) -> int:
        return len(self.engine.scheduler.requests)

    def _op_sleep(self) -> None:
        self._sleeping = True
        self.engine.release_kv()

    def _op_wake(self) -> None:
        self.engine.restore_kv()
        self._sleeping = False

    def _op_stats(self) -> EngineStats:
        return self.stats()

    def _op_add_adapter(self, ref: LoraRef) -> dict:
        return self.engine.add_adapter(ref)

    def _op_remove_adapter(self, name: str) -> int:
        return self.engine.remove_adapter(name)

    def _op_list_adapters(self) -> list[dict]:
        return self.engine.list_adapters()

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
