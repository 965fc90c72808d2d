"""The rollout executor's loop, owned by each ingress replica.

Every ``tick_s`` the one ingress replica holding the executor lease (``lease_s``) ticks every
live rollout. Every replica records its requests' outcomes into the A/B counters as they
finish (stage 7), so there is nothing to flush here. Why in the ingress (and not a dedicated
actor): the ingress is where the outcomes are measured and where the split is read, it is
already supervised and restarted by Serve, and with an in-process store (no Redis) it is the
only process that sees the registry at all. With Redis, a replica that dies hands the lease
over after at most ``lease_s``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Optional

from fleetserve.canary.executor import RolloutExecutor
from fleetserve.canary.rollout_store import RolloutStore
from fleetserve.tenants.store import STORE_ERRORS

log = logging.getLogger(__name__)

LEASE = "rollout-executor"


class RolloutRunner:
    """Take or renew the lease, tick; forever, never raising."""

    def __init__(self, executor: RolloutExecutor, rollouts: RolloutStore, tick_s: float, lease_s: float,
                 holder: Optional[str] = None) -> None:
        self.executor, self.rollouts = executor, rollouts
        self.tick_s, self.lease_s = tick_s, lease_s
        self.holder = holder or f"ingress-{uuid.uuid4().hex[:12]}"
        self.leader = False
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        """Start the loop on the running event loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fleetserve-rollout-runner")

    async def _run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.tick_s)  # the loop's period, not a synchronisation

    async def step(self) -> None:
        """One period: execute if this replica holds the lease."""
        try:
            self.leader = await self.rollouts.lease(LEASE, self.holder, self.lease_s)
            if self.leader:
                await self.executor.tick_all()
        except STORE_ERRORS as exc:
            log.warning("canary store unreachable (%s); the rollout holds until it is back", type(exc).__name__)
        except Exception:  # noqa: BLE001 - the loop must outlive any one bad tick
            log.exception("rollout executor tick failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
