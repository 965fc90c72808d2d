"""The scaling controller behind the admin API's :class:`ScalingControl` shape, in-process.

The ingress reaches the controller actor through ``application.scaling_controller``; this
adapter serves the same calls from a :class:`ScalingController` in the same process (the
controller actor itself, and tests).
"""

from __future__ import annotations

from typing import Optional

from fleetserve.autoscaler.actuator import FleetId
from fleetserve.autoscaler.controller import ScalingController
from fleetserve.autoscaler.controller_state import ScaleOverride


class LocalScalingControl:
    def __init__(self, controller: ScalingController, registry=None):
        """``registry``: where the controller's observer keeps its series (ControllerMetrics)."""
        self.controller = controller
        self.registry = registry

    async def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry) if self.registry is not None else b""

    async def status(self) -> dict:
        return self.controller.status()

    async def set_override(self, model: str, version: str, min_replicas: Optional[int], max_replicas: Optional[int],
                           warm: Optional[int]) -> dict:
        fleet = FleetId(model, version)
        st = self.controller.states.get(fleet.key)
        old = st.override if st is not None else ScaleOverride()
        new = ScaleOverride(min_replicas if min_replicas is not None else old.min_replicas,
                            max_replicas if max_replicas is not None else old.max_replicas,
                            warm if warm is not None else old.warm)
        await self.controller.set_override(fleet, new)
        return {"fleet": fleet.key, **self.controller.status()[fleet.key]}
