"""Thread-priority tuning on small CPU nodes: lift the SCHED_IDLE step thread while a request waits (measured waits up to 6.5 ms).

Priority inheritance for the SCHED_IDLE step thread of the engine process. The step thread
takes new requests in at its pause points: between steps, and after each layer's attention
and MLP (``core_process``). Under SCHED_IDLE it only runs on a core that no other thread
wants, so while both cores of a small node run the request path it does not reach its next
pause point, and a premium request waits in the pipe behind the flood's HTTP handling.
Measured under the overload bench (``perf sched``, 10 s; docs/benchmarks.md, "Two priority
inversions"): the step thread waited for a core for more than 4 ms 12 times, up to 6.5 ms.

The doorbell is a normal-priority thread that waits on the pipe. When a message arrives it
lifts the step thread to SCHED_OTHER; the step thread puts itself back under SCHED_IDLE at
its next pause point, once it has read the pipe and handed a higher-class request's step to
the normal-priority lane (:meth:`ArrivalLift.drained`), or after the step it was running
when nothing could pause. So an arrival costs the flood at most half a layer of compute at
normal priority, and the request no longer waits for a free core to be taken in.

Lifting another thread out of SCHED_IDLE needs CAP_SYS_NICE (or RLIMIT_NICE). Without it
the first attempt is refused, logged once, and the doorbell stops: the step thread keeps
plain SCHED_IDLE, as before.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable

log = logging.getLogger(__name__)


def _lift(tid: int) -> None:
    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def _lower_self() -> None:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # always allowed: a lower priority


class ArrivalLift:
    """Lifts thread ``step_tid`` to normal priority whenever ``fd`` becomes readable, until
    that thread calls :meth:`drained`. Start it from a normal-priority thread."""

    def __init__(self, fd: int, step_tid: int, *, lift: Callable[[int], None] = _lift,
                 lower_self: Callable[[], None] = _lower_self):
        self._fd = fd
        self._tid = step_tid
        self._lift = lift
        self._lower_self = lower_self
        self._cond = threading.Condition()
        self._lifted = False  # the step thread runs at normal priority until it calls drained()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()  # close() wakes the doorbell's poll
        self.enabled = True  # False once the OS refused to lift the step thread
        self.num_lifts = 0
        self._thread = threading.Thread(
            target=self._serve, name="fleetserve-engine-doorbell", daemon=True)
        self._thread.start()

    def drained(self) -> None:
        """Called by the step thread once it has taken in every message queued so far (and
        handed on what must run at normal priority): back under SCHED_IDLE if lifted."""
        if not self._lifted:  # unlocked read: a lift that lands just after is undone at the next call
            return
        self._lower_self()
        with self._cond:
            self._lifted = False
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(5)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLHUP)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready or self._closed:
                return
            try:
                self._lift(self._tid)
            except PermissionError as exc:
                self.enabled = False
                log.info("engine step thread is not lifted on arrivals (needs CAP_SYS_NICE): %s", exc)
                return
            except OSError as exc:  # the step thread is gone
                self.enabled = False
                log.warning("engine doorbell stops: %s", exc)
                return
            self.num_lifts += 1
            with self._cond:
                self._lifted = True
                while self._lifted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
