"""The version registry: the versions of each served model and the weights of its split.

State lives in an injected :class:`~fleetserve.canary.store.CanaryStore` (memory or Redis),
so every ingress replica reads the same split and the rollout executor can resume. The
registry owns the invariants: a version id is registered once, weights name only
registered versions that are not blocked, and a version carrying traffic is not removed.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Optional

from fleetserve.canary.errors import UnknownVersionError, VersionConflictError
from fleetserve.canary.store import CanaryStore
from fleetserve.canary.versions import ModelVersion, VersionState

WEIGHTS = "weights"
ROLLOUTS = "rollouts"


def _versions_table(model: str) -> str:
    return f"versions:{model}"


class VersionRegistry:
    """Versions and split weights per model, over a store (async: the store may be remote)."""

    def __init__(self, store: CanaryStore) -> None:
        self._store = store

    @property
    def store(self) -> CanaryStore:
        """The backing store (the rollout executor keeps its tables there too)."""
        return self._store

    async def register(self, version: ModelVersion) -> ModelVersion:
        """Add a new version; raises :class:`VersionConflictError` if its id is taken."""
        stored = await self._store.put_new(_versions_table(version.model), version.version_id,
                                           json.dumps(version.to_dict()))
        if not stored:
            raise VersionConflictError(f"version {version.label} is already registered", field="version_id")
        return version

    async def get(self, model: str, version_id: str) -> Optional[ModelVersion]:
        raw = await self._store.get(_versions_table(model), version_id)
        return ModelVersion.from_dict(json.loads(raw)) if raw is not None else None

    async def require(self, model: str, version_id: str) -> ModelVersion:
        v = await self.get(model, version_id)
        if v is None:
            raise UnknownVersionError(f"version {model}@{version_id} is not registered", field="version")
        return v

    async def versions(self, model: str) -> list[ModelVersion]:
        """Every version of ``model``, by version id."""
        rows = await self._store.get_all(_versions_table(model))
        return [ModelVersion.from_dict(json.loads(rows[k])) for k in sorted(rows)]

    async def set_state(
        self, model: str, version_id: str, state: VersionState, blocked_reason: Optional[str] = None
    ) -> ModelVersion:
        v = (await self.require(model, version_id)).with_state(state, blocked_reason)
        await self._store.put(_versions_table(model), version_id, json.dumps(v.to_dict()))
        return v

    async def remove(self, model: str, version_id: str) -> None:
        """Forget a version; refused while its split weight is above zero."""
        await self.require(model, version_id)
        if (await self.weights(model)).get(version_id, 0.0) > 0:
            raise VersionConflictError(f"version {model}@{version_id} still carries traffic; "
                                       "move its weight to another version first", field="version_id")
        await self._store.delete(_versions_table(model), version_id)

    async def weights(self, model: str) -> dict[str, float]:
        """The split: version id -> share of traffic (sums to 1); empty if never set."""
        raw = await self._store.get(WEIGHTS, model)
        return {k: float(v) for k, v in json.loads(raw).items()} if raw is not None else {}

    async def set_weights(self, model: str, weights: Mapping[str, float]) -> dict[str, float]:
        """Replace the split. Weights are normalised to sum to 1; zero weights are dropped."""
        cleaned = _normalise(weights)
        known = {v.version_id: v for v in await self.versions(model)}
        for vid, w in cleaned.items():
            if vid not in known:
                raise UnknownVersionError(f"weights name version {model}@{vid}, which is not registered",
                                          field=f"weights.{vid}")
            if known[vid].state is VersionState.BLOCKED:
                raise VersionConflictError(f"version {model}@{vid} is blocked ({known[vid].blocked_reason}) "
                                           "and cannot take traffic", field=f"weights.{vid}")
        await self._store.put(WEIGHTS, model, json.dumps(cleaned))
        return cleaned

    async def save_rollout(self, model: str, state_json: str) -> None:
        """Persist the rollout executor's state (``RolloutState.to_json()``)."""
        await self._store.put(ROLLOUTS, model, state_json)

    async def load_rollout(self, model: str) -> Optional[str]:
        return await self._store.get(ROLLOUTS, model)


def _normalise(weights: Mapping[str, float]) -> dict[str, float]:
    for vid, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise VersionConflictError(f"weights.{vid} must be a finite number >= 0, got {w!r}", field=f"weights.{vid}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise VersionConflictError("weights must give some version a positive share", field="weights")
    return {vid: w / total for vid, w in sorted(weights.items()) if w > 0}
