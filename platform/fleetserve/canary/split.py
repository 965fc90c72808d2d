"""Sticky weighted traffic split between the versions of one model, and the pin rule.

Every user is hashed, together with the experiment id, to a point ``u`` in ``[0, 1)``. The
versions are laid out on ``[0, 1)`` as consecutive slices, in **sorted version-id order**
(every ingress replica then agrees whatever order its weights mapping came in), each slice
as wide as its normalised weight; the user gets the version whose slice holds ``u``.

Why this is sticky: with two versions, growing the canary's weight from w1 to w2 moves only
the boundary between the two slices, so exactly the users whose ``u`` lies between the old
and the new boundary change version; everyone else keeps theirs. A new experiment id
reshuffles everyone (a fresh, independent assignment for a new test).

The sticky key is the request's OpenAI ``user`` field scoped by tenant (user ids are the
tenant's own namespace), or the tenant id alone when the request names no user.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Collection, Mapping, Optional

from fleetserve.canary.errors import UnknownVersionError

_SCALE = float(1 << 64)


@dataclass(frozen=True)
class VersionChoice:
    """Stage 3's answer: the version a request goes to, and why (``"pinned"`` or ``"split"``)."""

    version: str
    reason: str


def sticky_key(user: Optional[str], tenant_id: str) -> str:
    """The identity a request is hashed by: its ``user`` (within the tenant), else the tenant."""
    return f"tenant:{tenant_id}|user:{user}" if user else f"tenant:{tenant_id}"


def hash_unit(key: str, experiment_id: str) -> float:
    """A stable point in ``[0, 1)`` for (key, experiment): the first 8 bytes of a sha256."""
    digest = hashlib.sha256(f"{experiment_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def layout(weights: Mapping[str, float]) -> list[tuple[str, float, float]]:
    """``(version, start, end)`` slices of ``[0, 1)`` in sorted version order (zero-weight ones omitted)."""
    total = _check_weights(weights)
    slices, start = [], 0.0
    for version in sorted(weights):
        w = weights[version] / total
        if w > 0:
            slices.append((version, start, start + w))
            start += w
    return slices


def assign(user_key: str, experiment_id: str, weights: Mapping[str, float]) -> str:
    """The version ``user_key`` is served by under ``weights`` (any non-negative scale)."""
    u = hash_unit(user_key, experiment_id)
    slices = layout(weights)
    for version, _, end in slices:
        if u < end:
            return version
    return slices[-1][0]  # u within float rounding of 1.0


def resolve_pin(
    requested: Optional[str], *, is_admin: bool, tenant_may_pin: bool, versions: Collection[str]
) -> Optional[str]:
    """The pinned version to honour, or None to use the split.

    A pin (the version header) is honoured only for admin keys or tenants flagged for it;
    from anyone else it is ignored, so a client cannot opt itself into a canary. A pin that
    is honoured but names no registered version raises :class:`UnknownVersionError`.
    """
    if not requested or not (is_admin or tenant_may_pin):
        return None
    if requested not in versions:
        raise UnknownVersionError(f"version {requested!r} is not registered (known: {sorted(versions)})",
                                  field="version")
    return requested


def choose_version(
    *, user: Optional[str], tenant_id: str, experiment_id: str, weights: Mapping[str, float],
    pinned: Optional[str] = None, is_admin: bool = False, tenant_may_pin: bool = False,
) -> VersionChoice:
    """Stage 3 in one call: an honoured pin wins, otherwise the sticky split decides."""
    pin = resolve_pin(pinned, is_admin=is_admin, tenant_may_pin=tenant_may_pin, versions=weights.keys())
    if pin is not None:
        return VersionChoice(pin, "pinned")
    return VersionChoice(assign(sticky_key(user, tenant_id), experiment_id, weights), "split")


def _check_weights(weights: Mapping[str, float]) -> float:
    if not weights:
        raise ValueError("weights must name at least one version")
    for version, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{version!r}] must be a finite number >= 0, got {w!r}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError("weights must not all be zero")
    return total
