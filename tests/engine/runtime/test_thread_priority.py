"""The engine process's doorbell: an arrival on the pipe lifts the SCHED_IDLE step thread
until it has read the pipe."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from fleetserve.engine.runtime.thread_priority import ArrivalLift

TIMEOUT = 10.0


def wait_until(cond, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


class Recorder:
    def __init__(self):
        self.lifts: list[int] = []
        self.lowered = 0

    def lift(self, tid: int) -> None:
        self.lifts.append(tid)

    def lower_self(self) -> None:
        self.lowered += 1


def test_each_arrival_lifts_once_until_the_step_thread_has_read_the_pipe():
    r, w = os.pipe()
    rec = Recorder()
    booster = ArrivalLift(r, 4242, lift=rec.lift, lower_self=rec.lower_self)
    try:
        booster.drained()  # nothing lifted yet: nothing to lower
        assert rec.lowered == 0 and rec.lifts == []
        os.write(w, b"a")
        wait_until(lambda: rec.lifts == [4242])
        time.sleep(0.05)  # still unread: the doorbell waits for drained() instead of spinning
        assert rec.lifts == [4242]
        os.read(r, 1)
        wait_until(lambda: booster._lifted)
        booster.drained()
        assert rec.lowered == 1
        os.write(w, b"b")  # the next arrival lifts again
        wait_until(lambda: len(rec.lifts) == 2)
        os.read(r, 1)
        wait_until(lambda: booster._lifted)
        booster.drained()
        assert rec.lowered == 2 and booster.num_lifts == 2 and booster.enabled
    finally:
        booster.close()
        os.close(w)
        os.close(r)
    assert not booster._thread.is_alive()


def test_without_the_privilege_the_doorbell_stops_and_lifts_nothing():
    r, w = os.pipe()

    def refused(tid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    booster = ArrivalLift(r, 4242, lift=refused, lower_self=lambda: None)
    try:
        os.write(w, b"a")
        wait_until(lambda: not booster._thread.is_alive())
        assert booster.enabled is False and booster.num_lifts == 0
        booster.drained()  # harmless afterwards
    finally:
        booster.close()
        os.close(w)
        os.close(r)


def can_lift_out_of_sched_idle() -> bool:
    """Whether this process may move a thread from SCHED_IDLE back to SCHED_OTHER."""
    result = []

    def probe():
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            result.append(True)
        except (AttributeError, OSError):
            result.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return result[0]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE") or not can_lift_out_of_sched_idle(),
                    reason="needs Linux and CAP_SYS_NICE to lift a thread out of SCHED_IDLE")
def test_a_real_sched_idle_thread_is_lifted_on_arrival_and_lowers_itself_after_reading():
    r, w = os.pipe()
    ready, stop = threading.Event(), threading.Event()
    tid: list[int] = []
    policies: list[int] = []
    booster_box: list[ArrivalLift] = []

    def step_thread():
        tid.append(threading.get_native_id())
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        ready.set()
        while not stop.is_set():  # a "forward pass" that checks the pipe at pause points
            if booster_box and booster_box[0]._lifted:  # the arrival has been seen and the lift landed
                if select.select([r], [], [], 0)[0]:
                    policies.append(os.sched_getscheduler(0))  # lifted before reading
                    os.read(r, 1)
                    booster_box[0].drained()
                    policies.append(os.sched_getscheduler(0))  # back under SCHED_IDLE
            time.sleep(0.001)

    t = threading.Thread(target=step_thread)
    t.start()
    ready.wait(TIMEOUT)
    booster = ArrivalLift(r, tid[0])  # the real lift: os.sched_setscheduler on that thread
    booster_box.append(booster)
    try:
        os.write(w, b"a")
        wait_until(lambda: len(policies) == 2)
        assert policies == [os.SCHED_OTHER, os.SCHED_IDLE]
        assert os.sched_getscheduler(tid[0]) == os.SCHED_IDLE
        assert booster.num_lifts == 1 and booster.enabled and not booster._lifted
    finally:
        stop.set()
        t.join(TIMEOUT)
        booster.close()
        os.close(w)
        os.close(r)
