"""Typed errors of the canary package. Each subclasses a ``fleetserve.errors`` class, so the
API edge maps it (one place) without knowing this package."""

from __future__ import annotations

from fleetserve.errors import ConfigError, ConflictError, FleetserveError, InvalidRequestError, NotFoundError


class CheckpointError(ConfigError):
    """A checkpoint directory is missing or holds no weight or config file to checksum."""


class ChecksumMismatchError(FleetserveError):
    """A checkpoint's files no longer hash to the checksum recorded for its version."""


class UnknownVersionError(NotFoundError):
    """A version id that is not registered for the model."""


class VersionConflictError(InvalidRequestError):
    """A registry change that contradicts what is stored (duplicate id, weights naming unknown versions)."""


class RolloutConflictError(ConflictError):
    """A rollout command that contradicts the model's rollout (one already live, none to command,
    rollouts disabled in the config): 409."""
