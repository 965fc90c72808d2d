"""The native engine's step loop in a child process of the replica (``python -m`` this module).

:class:`fleetserve.engine.process.process_engine.ProcessEngine` starts it and talks to it over one
socket pair (``multiprocessing.connection`` framing around the typed, versioned messages of
:mod:`fleetserve.engine.process.messages`, which lists them). The child's main
thread *is* the step thread: it reads its pipe between steps and, for new requests, between
the layers of a running forward pass, so no thread of this process waits for the GIL to take
a request in, and no thread of the replica ever waits for the model's.

A frame that does not decode (wrong version, unknown type, garbage) is logged and ends the
step loop as the parent's going away does: the pipe can no longer be trusted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
import time
import traceback
from functools import partial
from multiprocessing.connection import Connection
from typing import Optional

from fleetserve.engine.runtime.heap_freeze import freeze_startup_heap
from fleetserve.engine.process import messages as m
from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.process.pacing import OutputPacer
from fleetserve.engine.protocol import EngineStats, RequestOutput
from fleetserve.engine.runtime.thread_priority import ArrivalLift
from fleetserve.engine.runtime.priority_lane import PriorityLane
from fleetserve.errors import portable

log = logging.getLogger("fleetserve.engine.process.core_process")

STATS_EVERY_S = 0.02  # longest the replica goes without fresh EngineStats while requests run


class PipeCore(AsyncEngine):
    """The step loop of :class:`AsyncEngine`, fed by a pipe instead of an event loop."""

    def __init__(self, config: EngineConfig, conn: Connection):
        super().__init__(config)
        self._conn = conn
        self._send_lock = threading.Lock()  # the lane thread sends too (side steps' replies)
        # Streams are paced here, before the pipe (see pacing.OutputPacer); the lane thread tracks
        # the requests it adds, so the pacer has a lock of its own.
        self._pacer = OutputPacer(time.monotonic)
        self._pacer_lock = threading.Lock()
        self._last_sent = 0.0  # when the parent last got stats with an "out" message
        self._booster: Optional[ArrivalLift] = None  # lifts the SCHED_IDLE step thread on arrivals

    def serve(self) -> None:
        """Load the model, say hello, run the step loop until told to stop or orphaned."""
        self._ensure_engine()
        freeze_startup_heap()  # torch and the model: ~380k objects a full collection would walk (~190 ms)
        self._send(m.Hello(self.model_info(), self.engine.stats()))
        if self.config.step_thread_idle and self.config.isolate_priority_prefill:
            self._lane = PriorityLane(init=self._bind_thread)  # before _run: keeps the normal policy
        if self.config.step_thread_idle and self.config.lift_step_thread_on_arrival:
            self._booster = ArrivalLift(self._conn.fileno(), threading.get_native_id())  # also before _run
        try:
            self._run()  # this thread becomes the step thread (SCHED_IDLE on CPU)
        finally:
            if self._booster is not None:
                self._booster.close()
            if self._lane is not None:
                self._lane.close()

    # ---------------------------------------------------------------- AsyncEngine hooks
    def _take_work(self):
        block = not (self._commands or self._adds or self._has_work())
        if block:
            self._flush_held()
        self._read(block=block)
        return self._take_queued()

    def _poll_inbox(self) -> None:
        self._read(block=False)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        with self._pacer_lock:
            ready = self._pacer.offer(outputs) + self._pacer.due()
        now = time.monotonic()
        # Outputs that are due, and the replica's view of the engine at least every
        # STATS_EVERY_S even while every stream waits out its interval.
        if ready or now - self._last_sent >= STATS_EVERY_S:
            self._last_sent = now
            self._send(m.Outputs(ready, self.engine.stats()))

    def _op_abort(self, request_id: str) -> Optional[RequestOutput]:
        out = super()._op_abort(request_id)
        with self._pacer_lock:
            return self._pacer.take(request_id, out)

    def _handed_over(self) -> None:
        if self._booster is not None:
            self._booster.drained()  # back under SCHED_IDLE if an arrival lifted this thread

    def _notify_idle(self) -> None:
        self._flush_held()
        self._send(m.Idle(self.engine.stats()))

    def _flush_held(self) -> None:
        """Send every output the pacer holds (before this process waits for work)."""
        with self._pacer_lock:
            held = self._pacer.flush_all()
        if held:
            self._send(m.Outputs(held, self.engine.stats()))

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # ---------------------------------------------------------------- the pipe
    def _read(self, block: bool) -> None:
        """Take every message already sent; with ``block``, wait for at least one."""
        try:
            if block:
                self._conn.poll(None)
            while self._conn.poll(0):
                self._take(m.decode(self._conn.recv_bytes()))
        except (EOFError, OSError):  # the replica is gone: nobody to serve
            self._stopping = True
        except m.FrameError as exc:  # the pipe can no longer be trusted: stop serving it
            log.error("engine process: bad frame from the replica, stopping: %s", exc)
            self._stopping = True

    def _take(self, msg) -> None:
        kind = type(msg)
        future: concurrent.futures.Future = concurrent.futures.Future()
        if kind is m.Add:
            request = msg.request
            future.add_done_callback(partial(self._answer_add, request.request_id, request.stream_interval_s))
            self._adds.append((request, future))
        elif kind is m.Op:
            if msg.call_id is not None:
                future.add_done_callback(partial(self._answer_op, msg.call_id))
            self._commands.append((partial(self._op, msg.name, *msg.args), future))
        elif kind is m.Stop:
            self._stopping = True
        else:
            raise m.FrameError(f"engine pipe: {kind.__name__} is not a message for the engine process")

    def _answer_add(self, request_id: str, interval_s: float, future: concurrent.futures.Future) -> None:
        exc = future.exception()
        if exc is None:  # before the request's first step: it runs on this thread or after it
            with self._pacer_lock:
                self._pacer.track(request_id, interval_s)
        self._send(m.Added(request_id, portable(exc)))

    def _answer_op(self, call_id: int, future: concurrent.futures.Future) -> None:
        exc = future.exception()
        self._send(m.Reply(call_id, None if exc else future.result(), portable(exc)))

    def _send(self, msg) -> None:
        data = m.encode(msg)  # outside the lock: the lane thread may be sending too
        try:
            with self._send_lock:
                self._conn.send_bytes(data)
        except OSError:  # the replica is gone
            self._stopping = True


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn = Connection(int(argv[0]))
    try:
        first = m.decode(conn.recv_bytes())
        if type(first) is not m.Configure:
            raise m.FrameError(f"engine pipe: expected Configure first, got {type(first).__name__}")
        PipeCore(EngineConfig.model_validate(first.config), conn).serve()
    except (EOFError, KeyboardInterrupt):
        return 0
    except BaseException as exc:  # noqa: BLE001 - reported to the replica, which fails its health check
        log.exception("engine process failed")
        try:
            conn.send_bytes(m.encode(m.Fatal(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")))
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
