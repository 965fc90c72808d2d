"""What the rollout policy sees on each call: typed, built by the executor from metrics.

Arm windows cover the current step's window (since ``RolloutState.phase_since``) so a verdict
is about the traffic of this step only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional


class Command(str, Enum):
    """Operator commands, passed in with the snapshot they arrived before."""

    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class ArmWindow:
    """One arm's traffic over a window: requests, errors (5xx + engine errors), latency p95s,
    and drift histograms (feature -> counts over bins shared with the other arm)."""

    requests: int = 0
    errors: int = 0
    ttft_p95_s: Optional[float] = None
    tpot_p95_s: Optional[float] = None
    histograms: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.requests < 0 or not 0 <= self.errors <= self.requests:
            raise ValueError(f"need 0 <= errors <= requests, got errors={self.errors}, requests={self.requests}")

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "ttft_p95_s": self.ttft_p95_s,
                "tpot_p95_s": self.tpot_p95_s, "histograms": {k: list(v) for k, v in self.histograms.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArmWindow":
        return cls(int(d["requests"]), int(d["errors"]), d.get("ttft_p95_s"), d.get("tpot_p95_s"),
                   {k: tuple(int(c) for c in v) for k, v in d.get("histograms", {}).items()})


@dataclass(frozen=True)
class CanaryHealth:
    """The canary deployment's bring-up as the executor last saw it.

    ``checksum_ok``/``healthy`` are None until checked. ``error`` carries a load, warm-up or
    health failure message (the phase it happens in names it).
    """

    loaded: bool = False
    checksum_ok: Optional[bool] = None
    checksum_error: Optional[str] = None
    warmup_completed: int = 0
    healthy: Optional[bool] = None
    error: Optional[str] = None


@dataclass(frozen=True)
class RolloutSnapshot:
    """One observation: bring-up status, both arms' step windows, and an operator command."""

    health: CanaryHealth = field(default_factory=CanaryHealth)
    stable: ArmWindow = field(default_factory=ArmWindow)
    canary: ArmWindow = field(default_factory=ArmWindow)
    command: Optional[Command] = None
