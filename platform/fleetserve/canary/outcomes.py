"""Per-version request outcomes of the running rollout steps, as the ingress sees them.

Stage 7 (``account``) calls :meth:`OutcomeRecorder.record` for every request that reached
stage 3. Only a model whose rollout serves a canary has a window (``window_for``, from the
ingress's cached registry view), so a model without a rollout costs one dict lookup.
What counts as a failure: a 5xx answer (engine error, replica gone, truncated stream). A
4xx (the client's input, its quota, shedding) says nothing about the version and a 499 (the
client left) neither, so those are not counted at all.

:meth:`flush` writes this replica's totals per (window, version) to the store under its own
``source`` id, so several ingress replicas, and one restarted under a new id, add up in
:meth:`RolloutStore.window_arms`.
"""

from __future__ import annotations

import uuid
from typing import Callable, Iterable, Optional

from fleetserve.canary.rollout_store import RolloutStore
from fleetserve.canary.window import ArmCounts

WindowFor = Callable[[str], Optional[str]]  # model -> the live window id, or None


def counts_as(status: str) -> Optional[bool]:
    """None: not counted; else whether the request failed."""
    if status.startswith("5"):
        return True
    if status.startswith("2"):
        return False
    return None


class OutcomeRecorder:
    """This process's counts of the live windows, flushed to the store by the rollout runner."""

    def __init__(self, window_for: WindowFor, source: Optional[str] = None) -> None:
        self._window_for = window_for
        self.source = source or uuid.uuid4().hex[:12]
        self._counts: dict[tuple[str, str, str], ArmCounts] = {}  # (model, window, version)
        self._dirty: set[tuple[str, str, str]] = set()

    def record(self, model: str, version: str, status: str, ttft_s: Optional[float],
               tpots_s: Iterable[float] = ()) -> None:
        window = self._window_for(model)
        failed = counts_as(status)
        if window is None or failed is None:
            return
        key = (model, window, version)
        self._counts.setdefault(key, ArmCounts()).record(failed, None if failed else ttft_s, () if failed else tpots_s)
        self._dirty.add(key)

    async def flush(self, store: RolloutStore) -> int:
        """Write the totals changed since the last flush; forget windows no longer live.
        Returns the number of rows written."""
        dirty, self._dirty = self._dirty, set()
        try:
            for model, window, version in dirty:
                await store.put_window_row(model, window, version, self.source, self._counts[(model, window, version)])
        except BaseException:
            self._dirty |= dirty  # totals are cumulative: the next flush writes them again
            raise
        live = {m: self._window_for(m) for m, _, _ in self._counts}
        for key in [k for k in self._counts if live[k[0]] != k[1] and k not in self._dirty]:
            del self._counts[key]
        return len(dirty)
