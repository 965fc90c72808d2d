"""Several versions of one model, each its own fleet: who learns of them, and how a traffic
split moves demand between them.

The controller plans each model version (its stable one and every canary) as its own fleet,
with its own bounds and warm pool (``fleetserve scale MODEL --version V``). A
:class:`FleetCatalog` tells it, each tick, which versions exist and what share of the
model's traffic each gets; the real one reads the version registry (``canary/``), tests
pass a fake.

Why the weight matters when every version's replicas already report their own load: a
rollout step (5 % -> 25 %) moves traffic at once, but a fleet's observed load follows only
as requests arrive. :func:`weighted_demand` sizes each version for its share of the whole
model's load now, so the canary scales up with the step, not after its queue built up;
the demand it takes from the stable version shows up there as that fleet's load falls.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Protocol

from fleetserve.autoscaler.actuator import FleetId


class FleetCatalog(Protocol):
    async def fleets(self) -> Mapping[FleetId, Optional[float]]:
        """Every model version to plan for -> its share of the model's traffic (0..1), or None
        when it has no split (the stable version alone, or a version pinned only by header)."""
        ...


def weighted_demand(ongoing: Mapping[FleetId, int], weights: Mapping[FleetId, Optional[float]]) -> Dict[FleetId, int]:
    """Requests each fleet should expect beyond what it carries now: its weight times the
    load of all its model's fleets, less its own (never negative; 0 without a weight)."""
    totals: Dict[str, int] = {}
    for f, n in ongoing.items():
        totals[f.model] = totals.get(f.model, 0) + n
    out = {}
    for f, n in ongoing.items():
        w = weights.get(f)
        out[f] = 0 if w is None else max(0, math.ceil(totals[f.model] * w - 1e-9) - n)
    return out
