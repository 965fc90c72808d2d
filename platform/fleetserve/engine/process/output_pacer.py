"""Pacing streams where the outputs are made: in the engine process, before they cross the pipe.

The engine makes one :class:`RequestOutput` per running request per step (about 140 steps/s
with the tiny model on CPU). Sending every one to the replica costs the replica's event
loop an unpickle and a queue hand-off each, although the replica then merges them for the
stream's ``stream_interval_s`` anyway (``EngineFront``). That loop also carries every new
request's way in and its first token's way out, so under load those per-step objects are
latency for everyone else. :class:`OutputPacer` holds a request's outputs back until its
interval is due and merges them (``merge_outputs``: deltas concatenated in order, nothing
dropped or repeated). A request's first output, its final one, and any output of a request
with no interval pass at once, so neither TTFT nor the end of a stream waits.

Pure bookkeeping with an injected clock; the engine process calls :meth:`offer` with each
step's outputs, :meth:`due` once per step, :meth:`flush_all` before it blocks, and
:meth:`take` when an operation (abort) produces a request's last output out of band.
"""

from __future__ import annotations

from typing import Callable, Optional

from fleetserve.engine.process.coalesce import merge_outputs
from fleetserve.engine.protocol import RequestOutput


class OutputPacer:
    def __init__(self, now: Callable[[], float]):
        self._now = now
        self._interval: dict[str, float] = {}  # request id -> stream_interval_s
        self._next: dict[str, float] = {}  # request id -> when its next output may leave
        self._held: dict[str, list[RequestOutput]] = {}  # outputs waiting for that time

    def track(self, request_id: str, interval_s: float) -> None:
        """A new request; ``interval_s`` 0 sends each of its outputs at once."""
        if interval_s > 0:
            self._interval[request_id] = interval_s

    def offer(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """This step's outputs; returns those to send now (merged per request)."""
        now = self._now()
        out = []
        for o in outputs:
            rid = o.request_id
            interval = self._interval.get(rid)
            if interval is None:  # unpaced, or not tracked (e.g. an error before tracking)
                out.append(self._merged(rid, o))
                continue
            if o.finished:
                out.append(self._merged(rid, o))
                self._forget(rid)
                continue
            due = self._next.get(rid)
            if due is None or now >= due:  # first output, or its interval has passed
                out.append(self._merged(rid, o))
                self._next[rid] = now + interval
            else:
                self._held.setdefault(rid, []).append(o)
        return out

    def due(self) -> list[RequestOutput]:
        """Held outputs whose interval has passed (requests that made no output this step,
        e.g. preempted ones, still get what they already made)."""
        if not self._held:
            return []
        now = self._now()
        ready = [rid for rid in self._held if now >= self._next.get(rid, 0.0)]
        out = []
        for rid in ready:
            out.append(merge_outputs(self._held.pop(rid)))
            self._next[rid] = now + self._interval.get(rid, 0.0)
        return out

    def flush_all(self) -> list[RequestOutput]:
        """Everything held, now (before the engine process blocks waiting for work)."""
        now = self._now()
        out = [merge_outputs(held) for held in self._held.values()]
        for rid in self._held:
            self._next[rid] = now + self._interval.get(rid, 0.0)
        self._held.clear()
        return out

    def take(self, request_id: str, final: Optional[RequestOutput]) -> Optional[RequestOutput]:
        """``final`` (a request's last output, made outside a step) with what is held for it
        in front; forgets the request."""
        held = self._held.get(request_id)
        self._forget(request_id)
        if final is None:
            return merge_outputs(held) if held else None
        return merge_outputs([*held, final]) if held else final

    def num_tracked(self) -> int:
        return len(self._interval)

    def _merged(self, rid: str, o: RequestOutput) -> RequestOutput:
        held = self._held.pop(rid, None)
        return merge_outputs([*held, o]) if held else o

    def _forget(self, rid: str) -> None:
        self._interval.pop(rid, None)
        self._next.pop(rid, None)
        self._held.pop(rid, None)
