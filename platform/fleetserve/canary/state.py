"""The rollout's state: what the policy remembers between calls, as JSON for the executor.

The executor persists ``to_json()`` (``VersionRegistry.save_rollout``) after every decision
and resumes from ``RolloutState.from_json`` after a restart; the policy needs nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Mapping, Optional

from fleetserve.canary.snapshot import ArmWindow


class Phase(str, Enum):
    """Where a rollout stands. Transitions live in ``canary/policy.py`` only."""

    REGISTERED = "registered"
    LOADING = "loading"
    WARMING = "warming"
    HEALTH_CHECK = "health_check"
    CANARY = "canary"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    BLOCKED = "blocked"


BRING_UP = frozenset({Phase.LOADING, Phase.WARMING, Phase.HEALTH_CHECK})
TERMINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.BLOCKED})


@dataclass(frozen=True)
class RolloutState:
    """One rollout of ``canary_version`` against ``stable_version`` of ``model``.

    ``phase_since`` is when the current phase (or canary step) began: timeouts and the step
    hold count from it, and the executor's arm windows start there. ``step_index`` indexes
    ``CanaryConfig.steps`` while the canary serves (kept while paused). ``baseline`` is stable's
    last full step window, the reference once stable serves no traffic (the 100 % step).
    """

    model: str
    stable_version: str
    canary_version: str
    experiment_id: str = ""
    phase: Phase = Phase.REGISTERED
    phase_since: float = 0.0
    step_index: Optional[int] = None
    paused_from: Optional[Phase] = None
    reason: Optional[str] = None
    baseline: Optional[ArmWindow] = None

    def __post_init__(self) -> None:
        if self.stable_version == self.canary_version:
            raise ValueError("stable_version and canary_version must differ")
        if not self.experiment_id:
            object.__setattr__(self, "experiment_id", f"{self.model}:{self.canary_version}")
        if (self.phase is Phase.PAUSED) != (self.paused_from is not None):
            raise ValueError("paused_from is set exactly when the phase is paused")
        if self.serving_phase is Phase.CANARY and self.step_index is None:
            raise ValueError("a serving canary needs a step_index")

    @property
    def serving_phase(self) -> Phase:
        """The phase that decides traffic: the paused-from phase while paused."""
        return self.paused_from if self.paused_from is not None else self.phase

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def moved(self, phase: Phase, now: float, **changes: Any) -> "RolloutState":
        """This state in ``phase`` from ``now`` on (a new window)."""
        return replace(self, phase=phase, phase_since=now, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "stable_version": self.stable_version, "canary_version": self.canary_version,
            "experiment_id": self.experiment_id, "phase": self.phase.value, "phase_since": self.phase_since,
            "step_index": self.step_index, "paused_from": self.paused_from.value if self.paused_from else None,
            "reason": self.reason, "baseline": self.baseline.to_dict() if self.baseline else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RolloutState":
        return cls(
            model=d["model"], stable_version=d["stable_version"], canary_version=d["canary_version"],
            experiment_id=d.get("experiment_id", ""), phase=Phase(d["phase"]), phase_since=float(d["phase_since"]),
            step_index=d.get("step_index"), paused_from=Phase(d["paused_from"]) if d.get("paused_from") else None,
            reason=d.get("reason"), baseline=ArmWindow.from_dict(d["baseline"]) if d.get("baseline") else None,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RolloutState":
        return cls.from_dict(json.loads(text))
