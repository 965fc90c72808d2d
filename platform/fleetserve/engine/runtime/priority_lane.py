"""Thread-priority tuning on small CPU nodes: first-token steps skip the SCHED_IDLE thread (measured: it waited up to 7.5 ms).

On CPU the step thread runs under SCHED_IDLE, so the request path sharing its cores preempts
model compute. A step that starts a higher-class request (an isolated prefill: its first
token) is on that request's critical path, though; the step thread hands exactly those steps
to this lane, whose thread keeps the normal policy (a thread cannot leave SCHED_IDLE without
privileges, so the policy is chosen by which thread runs the step). One step at a time; the
step thread blocks until it is done, so the engine is still driven by one thread at a time.

Measured under the overload bench (docs/benchmarks.md, "Two priority inversions"): a
first token made here and handed back to the SCHED_IDLE thread to send waited p99 5.5 ms,
max 7.5 ms, so the lane sends it itself. Turning SCHED_IDLE off instead
(``fleetserve-normal-step``) gave no premium gain (p99 ratio 3.1x vs 2.1x, 2.9x vs 2.9x).
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class PriorityLane:
    def __init__(self, init: Optional[Callable[[], None]] = None, name: str = "fleetserve-engine-priority"):
        """Start the lane's thread; it inherits the creating thread's CPU policy (create it
        from a normal-priority thread). ``init`` runs first on that thread (per-thread setup)."""
        self._init = init
        self._cond = threading.Condition()
        self._job: Optional[tuple[Callable, concurrent.futures.Future]] = None
        self._closed = False
        self.num_runs = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def native_id(self) -> Optional[int]:
        return self._thread.native_id

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the lane's thread and return its result (or raise its exception)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("priority lane is closed")
            self._job = (fn, future)
            self._cond.notify()
        return future.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(5)

    def _serve(self) -> None:
        if self._init is not None:
            self._init()
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._job is None:
                    return
                fn, future = self._job
                self._job = None
            self.num_runs += 1
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller by run()
                future.set_exception(exc)
