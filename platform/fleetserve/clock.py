"""Injected time. Policies never read ``time.time()``; they receive ``now`` or a Clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds. ``now()`` never goes backwards."""

    def now(self) -> float: ...


class SystemClock:
    """Wall-clock-independent monotonic time from the OS."""

    def now(self) -> float:
        return time.monotonic()


class WallClock:
    """Seconds since the epoch: for times stored and read back by another process (a rollout's
    step start survives the ingress that wrote it); may step with NTP, unlike SystemClock."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """Manually advanced clock for deterministic tests."""

    def __init__(self, start: float = 0.0):
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("FakeClock cannot go backwards")
        self._t += seconds
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError("FakeClock cannot go backwards")
        self._t = t
