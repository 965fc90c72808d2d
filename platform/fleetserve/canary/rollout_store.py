"""What the rollout executor keeps in the canary store, so any ingress replica can resume it.

Tables (all JSON values, see :mod:`fleetserve.canary.store`):

- ``rollouts``                 model -> ``RolloutState`` JSON (the policy's memory; also read
                               by every ingress's ``VersionTable`` for the experiment id)
- ``rollout_settings``         model -> :class:`RolloutSettings` (the start command's steps,
                               interval and minimum sample over the ``canary`` config)
- ``rollout_log:<model>``      zero-padded sequence -> :class:`DecisionRecord` (every
                               transition and every guardrail verdict, with the numbers)
- ``rollout_commands``         model -> pending operator command (pause, resume, promote, rollback)
- ``rollout_retire``           ``model|version`` -> wall time after which its deployment is deleted
- ``rollout_windows:<model>``  window id -> every variant's A/B totals (``VariantTotals``
                               fields) when that step window began
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from pydantic import ValidationError

from fleetserve.canary.ab_records import VariantTotals
from fleetserve.canary.config import CanaryConfig
from fleetserve.canary.errors import VersionConflictError
from fleetserve.canary.registry import ROLLOUTS
from fleetserve.canary.snapshot import Command
from fleetserve.canary.state import RolloutState
from fleetserve.canary.store import CanaryStore

SETTINGS, COMMANDS, RETIRE = "rollout_settings", "rollout_commands", "rollout_retire"
LOG_KEEP = 500  # decisions kept per model (the oldest go first)


@dataclass(frozen=True)
class RolloutSettings:
    """Per-rollout overrides of the ``canary`` config (None: the config's value)."""

    steps: Optional[tuple[float, ...]] = None
    step_interval_s: Optional[float] = None
    min_sample_per_step: Optional[int] = None

    def apply(self, base: CanaryConfig) -> CanaryConfig:
        """``base`` with these overrides, validated (a bad value is a 400 naming the field)."""
        changes = {k: v for k, v in asdict(self).items() if v is not None}
        try:
            return CanaryConfig.model_validate({**base.model_dump(), **changes})
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            raise VersionConflictError(f"{name}: {err['msg']}", field=name) from None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_json(cls, text: str) -> "RolloutSettings":
        d = json.loads(text)
        return cls(tuple(d["steps"]) if d.get("steps") else None, d.get("step_interval_s"),
                   d.get("min_sample_per_step"))


@dataclass(frozen=True)
class DecisionRecord:
    """One logged decision: when (wall time), what, and the numbers that drove it."""

    at: float
    event: Optional[str]
    phase: str
    step_index: Optional[int]  # 0-based index into the rollout's steps, None before the canary serves
    weights: Mapping[str, float]
    reason: Optional[str] = None
    verdict: Optional[dict[str, Any]] = None
    notes: tuple[str, ...] = ()
    stable: Optional[dict[str, Any]] = None
    canary: Optional[dict[str, Any]] = None
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["weights"] = dict(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DecisionRecord":
        return cls(**{**d, "notes": tuple(d.get("notes", ()))})


def _log(model: str) -> str:
    return f"rollout_log:{model}"


def _windows(model: str) -> str:
    return f"rollout_windows:{model}"


class RolloutStore:
    """Typed access to the executor's tables over any :class:`CanaryStore`."""

    def __init__(self, store: CanaryStore) -> None:
        self.store = store

    async def state(self, model: str) -> Optional[RolloutState]:
        raw = await self.store.get(ROLLOUTS, model)
        return RolloutState.from_json(raw) if raw else None

    async def states(self) -> dict[str, RolloutState]:
        return {m: RolloutState.from_json(raw) for m, raw in (await self.store.get_all(ROLLOUTS)).items()}

    async def save_state(self, state: RolloutState) -> None:
        await self.store.put(ROLLOUTS, state.model, state.to_json())

    async def settings(self, model: str) -> RolloutSettings:
        raw = await self.store.get(SETTINGS, model)
        return RolloutSettings.from_json(raw) if raw else RolloutSettings()

    async def save_settings(self, model: str, settings: RolloutSettings) -> None:
        await self.store.put(SETTINGS, model, settings.to_json())

    async def append_decision(self, model: str, record: DecisionRecord) -> DecisionRecord:
        rows = await self.store.get_all(_log(model))
        seq = max((int(k) for k in rows), default=0) + 1
        record = DecisionRecord.from_dict({**record.to_dict(), "seq": seq})
        await self.store.put(_log(model), f"{seq:09d}", json.dumps(record.to_dict()))
        for old in sorted(rows)[: max(0, len(rows) + 1 - LOG_KEEP)]:
            await self.store.delete(_log(model), old)
        return record

    async def decisions(self, model: str, last: int = 50) -> list[DecisionRecord]:
        rows = await self.store.get_all(_log(model))
        return [DecisionRecord.from_dict(json.loads(rows[k])) for k in sorted(rows)[-last:]]

    async def clear_log(self, model: str) -> None:
        for key in await self.store.get_all(_log(model)):
            await self.store.delete(_log(model), key)

    async def put_command(self, model: str, command: Command) -> None:
        await self.store.put(COMMANDS, model, command.value)

    async def pending_command(self, model: str) -> Optional[Command]:
        raw = await self.store.get(COMMANDS, model)
        return Command(raw) if raw else None

    async def clear_command(self, model: str) -> None:
        await self.store.delete(COMMANDS, model)

    async def schedule_retire(self, model: str, version: str, after: float) -> None:
        await self.store.put(RETIRE, f"{model}|{version}", json.dumps(after))

    async def due_retirements(self, now: float) -> list[tuple[str, str]]:
        rows = await self.store.get_all(RETIRE)
        return [tuple(k.split("|", 1)) for k, v in sorted(rows.items()) if json.loads(v) <= now]

    async def retired(self, model: str, version: str) -> None:
        await self.store.delete(RETIRE, f"{model}|{version}")

    async def save_window_start(self, model: str, window: str, totals: Mapping[str, VariantTotals]) -> bool:
        """Keep every variant's totals as ``window`` begins. The first save wins: a second one
        (a tick racing it after a lease change) would cut traffic already counted out of the window."""
        raw = json.dumps({v: t.to_fields() for v, t in totals.items()})
        return await self.store.put_new(_windows(model), window, raw)

    async def window_start(self, model: str, window: str) -> Optional[dict[str, VariantTotals]]:
        """The totals saved when ``window`` began; None before the first save."""
        raw = await self.store.get(_windows(model), window)
        return None if raw is None else {v: VariantTotals.decode(f) for v, f in json.loads(raw).items()}

    async def drop_windows(self, model: str, keep: Optional[str]) -> None:
        """Delete every window's rows except ``keep``'s."""
        for key in await self.store.get_all(_windows(model)):
            if key != keep:
                await self.store.delete(_windows(model), key)

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        return await self.store.lease(name, holder, ttl_s)
