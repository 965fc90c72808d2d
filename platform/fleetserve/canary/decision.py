"""What the rollout policy decides: data for the executor to act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from fleetserve.canary.state import RolloutState
from fleetserve.canary.versions import VersionState


@dataclass(frozen=True)
class GuardrailCheck:
    """One comparison: the canary's value against the limit derived from stable's."""

    name: str
    canary: float
    stable: float
    limit: float

    @property
    def breached(self) -> bool:
        return self.canary > self.limit

    def describe(self) -> str:
        return f"{self.name} canary {self.canary:.4g} > limit {self.limit:.4g} (stable {self.stable:.4g})"


@dataclass(frozen=True)
class Verdict:
    """Guardrails over one step window. ``reference`` is ``"window"`` (stable's traffic in
    the same window) or ``"baseline"`` (stable's last full window, once stable serves none)."""

    checks: tuple[GuardrailCheck, ...]
    canary_requests: int
    stable_requests: int
    reference: str = "window"

    @property
    def breaches(self) -> tuple[GuardrailCheck, ...]:
        return tuple(c for c in self.checks if c.breached)

    @property
    def passed(self) -> bool:
        return not self.breaches


@dataclass(frozen=True)
class RolloutDecision:
    """The new state, the split to apply, and why.

    ``event`` names the transition taken this call (None when holding): ``load``, ``warm``,
    ``health_check``, ``start_canary``, ``advance``, ``promote``, ``rollback``, ``block``,
    ``pause``, ``resume``. ``weights`` is the version -> share split the ingress should use now;
    ``version_states`` what each version's registry state should become (only changes).
    """

    state: RolloutState
    weights: Mapping[str, float]
    event: Optional[str] = None
    reason: Optional[str] = None
    verdict: Optional[Verdict] = None
    version_states: Mapping[str, VersionState] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
