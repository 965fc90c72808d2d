"""Stage 3 as the ingress runs it: the version registry's split, cached, and the choice per request.

:class:`VersionTable` keeps, per model, a copy of what the registry says (the split weights,
the versions that may take traffic, the experiment id) and refreshes it from the store at
most every ``refresh_s`` seconds of an injected clock, so the request path does no store I/O
per request. A model whose registry holds no split (the default: one version, no canary)
is served by its configured stable version with no hashing at all: exactly the cost of the
pass-through this replaces.

The choice itself is :mod:`fleetserve.canary.split`: an honoured pin (``resolve_pin``) wins,
otherwise the sticky split (``assign`` over ``sticky_key``). A pin may name any version that
is registered and not blocked, weighted or not (an operator smoke-tests a version before it
takes traffic).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Optional

from fleetserve.canary.registry import VersionRegistry
from fleetserve.canary.split import VersionChoice, assign, resolve_pin, sticky_key
from fleetserve.canary.state import RolloutState
from fleetserve.canary.versions import VersionState
from fleetserve.clock import Clock, SystemClock
from fleetserve.tenants.store import STORE_ERRORS

log = logging.getLogger(__name__)

# Versions that never take traffic, pinned or split.
NOT_SERVABLE = frozenset({VersionState.BLOCKED, VersionState.RETIRED, VersionState.ROLLED_BACK})


def route_key(model: str, version: str, stable_version: str) -> str:
    """The name stages 5-6 route by: the model alias for its stable (configured) version,
    ``model@version`` for any other version (each its own deployment)."""
    return model if version == stable_version else f"{model}@{version}"


def fingerprint(model: str, version: str) -> str:
    """What a response says served it: ``<model>@<version>``."""
    return f"{model}@{version}"


@dataclass(frozen=True)
class ModelSplit:
    """One model's cached split: weights (may be empty: stable only), servable versions, experiment."""

    weights: Mapping[str, float] = field(default_factory=dict)
    servable: frozenset[str] = frozenset()
    experiment_id: str = ""


class VersionTable:
    """The ingress's cached view of the version registry, and stage 3's choice.

    ``stable``: model -> its configured version (served when the registry has no split).
    ``registry`` None: every model has one version (no store is ever read).
    """

    def __init__(self, stable: Mapping[str, str], registry: Optional[VersionRegistry] = None,
                 clock: Optional[Clock] = None, refresh_s: float = 2.0,
                 pin_header: str = "x-fleetserve-version") -> None:
        self.pin_header = pin_header  # request header naming a version (CanaryConfig.pin_header)
        self._stable = dict(stable)
        self._registry = registry
        self._clock = clock or SystemClock()
        self._refresh_s = refresh_s
        self._splits: dict[str, ModelSplit] = {}
        self._checked: dict[str, float] = {}

    @property
    def registry(self) -> Optional[VersionRegistry]:
        return self._registry

    def stable_version(self, model: str) -> str:
        return self._stable[model]

    def split(self, model: str) -> ModelSplit:
        return self._splits.get(model, ModelSplit())

    async def refresh_if_due(self, model: str) -> None:
        """Reload ``model``'s split when ``refresh_s`` has passed since the last look; a store
        that is down keeps the cached copy (logged), so serving goes on with the last split."""
        if self._registry is None:
            return
        now = self._clock.now()
        last = self._checked.get(model)
        if last is not None and now - last < self._refresh_s:
            return
        self._checked[model] = now
        try:
            self._splits[model] = await self._load(model)
        except STORE_ERRORS as exc:
            log.warning("version registry unreachable (%s); keeping the cached split of %s", type(exc).__name__, model)

    def invalidate(self, model: str) -> None:
        """Make the next request reload (after an admin change made through this process)."""
        self._checked.pop(model, None)

    def choose(self, model: str, *, user: Optional[str], tenant_id: str, pinned: Optional[str],
               may_pin: bool) -> VersionChoice:
        """The version of ``model`` one request goes to (raises UnknownVersionError for an
        honoured pin naming no servable version)."""
        split = self._splits.get(model)
        stable = self._stable[model]
        if split is None or (not split.weights and not split.servable):
            if pinned and may_pin and pinned != stable:
                resolve_pin(pinned, is_admin=False, tenant_may_pin=True, versions={stable})
            return VersionChoice(stable, "stable")
        pin = resolve_pin(pinned, is_admin=False, tenant_may_pin=may_pin, versions=split.servable | {stable})
        if pin is not None:
            return VersionChoice(pin, "pinned")
        if not split.weights:
            return VersionChoice(stable, "stable")
        return VersionChoice(assign(sticky_key(user, tenant_id), split.experiment_id, split.weights), "split")

    async def _load(self, model: str) -> ModelSplit:
        reg = self._registry
        versions = await reg.versions(model)
        servable = frozenset(v.version_id for v in versions if v.state not in NOT_SERVABLE)
        weights = {k: w for k, w in (await reg.weights(model)).items() if k in servable and w > 0}
        rollout = _rollout(await reg.load_rollout(model))
        # The running rollout's experiment id, else the model name (a stable assignment).
        experiment = f"{model}:{rollout.experiment_id}" if rollout is not None else model
        return ModelSplit(weights, servable, experiment)


def _rollout(raw: Optional[str]) -> Optional[RolloutState]:
    if not raw:
        return None
    try:
        return RolloutState.from_json(raw)
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("unreadable rollout state in the registry; keying the split by the model name")
        return None
