"""TEST ONLY: make a replica fail a fraction of its requests, to exercise rollbacks end to end.

Set through the version's engine args (``{"fail_fraction": 0.5, "fail_seed": 7}``); the replica
takes both keys out before the engine sees its args. A failed request ends at once with an
engine error (``finish_reason: error``), which the ingress answers as a 500: what a canary
with a real defect looks like to the guardrails. Seeded, so a test's sequence of failures is
the same on every run. Never set it in production.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping

FAIL_FRACTION, FAIL_SEED = "fail_fraction", "fail_seed"


@dataclass
class FaultInjector:
    fail_fraction: float = 0.0
    seed: int = 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fail_fraction <= 1.0:
            raise ValueError(f"engine_args.{FAIL_FRACTION} must be in [0, 1], got {self.fail_fraction!r}")
        self._rng = random.Random(self.seed)

    @classmethod
    def split_args(cls, engine_args: Mapping[str, Any]) -> tuple["FaultInjector", dict[str, Any]]:
        """(the injector, the engine args without its keys)."""
        rest = {k: v for k, v in engine_args.items() if k not in (FAIL_FRACTION, FAIL_SEED)}
        return cls(float(engine_args.get(FAIL_FRACTION, 0.0)), int(engine_args.get(FAIL_SEED, 0))), rest

    def should_fail(self) -> bool:
        return self.fail_fraction > 0 and self._rng.random() < self.fail_fraction
