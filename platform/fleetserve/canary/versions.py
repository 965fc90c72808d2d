"""Model versions and checkpoint checksums.

A version is one checkpoint of a served model (its alias), recorded with a sha256 over the
files that decide what the model computes: weights (``*.safetensors``, ``*.bin``, their shard
indexes), ``config.json``, ``generation_config.json`` and the tokenizer files. Other files
(README, images) do not count, so editing a model card does not invalidate a version.

The checksum is the sha256 of a *manifest*: one line ``<relative path> <sha256 of file>`` per
counted file, sorted by path. Sorting makes it independent of directory listing order; the
path in each line makes a renamed or moved file a change. The per-file digests are kept with
the version, so a mismatch can name the file that changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional

from fleetserve.canary.errors import CheckpointError, ChecksumMismatchError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
CONFIG_FILES = frozenset({"config.json", "generation_config.json"})
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.json", "chat_template.jinja",
})
_CHUNK = 1 << 20


class VersionState(str, Enum):
    """Where a version stands. Rollout phases (loading, warming, steps) live in the rollout state."""

    REGISTERED = "registered"
    ROLLING_OUT = "rolling_out"
    STABLE = "stable"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class ModelVersion:
    """One checkpoint of a served model. ``checksum`` is ``manifest_checksum(files)``."""

    model: str
    version_id: str
    checkpoint: str
    checksum: str
    engine: str = "native"
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    state: VersionState = VersionState.REGISTERED
    blocked_reason: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.model or not self.version_id:
            raise ValueError("model and version_id must be non-empty")
        if (self.state is VersionState.BLOCKED) != (self.blocked_reason is not None):
            raise ValueError("blocked_reason is required for a blocked version and only for one")

    @property
    def label(self) -> str:
        return f"{self.model}@{self.version_id}"

    def with_state(self, state: VersionState, blocked_reason: Optional[str] = None) -> "ModelVersion":
        return replace(self, state=state, blocked_reason=blocked_reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version_id": self.version_id, "checkpoint": self.checkpoint,
            "checksum": self.checksum, "engine": self.engine, "engine_args": dict(self.engine_args),
            "files": dict(self.files), "state": self.state.value, "blocked_reason": self.blocked_reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelVersion":
        return cls(
            model=d["model"], version_id=d["version_id"], checkpoint=d["checkpoint"], checksum=d["checksum"],
            engine=d.get("engine", "native"), engine_args=dict(d.get("engine_args", {})),
            files=dict(d.get("files", {})), state=VersionState(d.get("state", "registered")),
            blocked_reason=d.get("blocked_reason"),
        )


def is_counted(name: str) -> bool:
    """Whether a file (by name) is part of the checksum."""
    return (
        name.endswith(WEIGHT_SUFFIXES) or name.endswith(INDEX_SUFFIXES)
        or name in CONFIG_FILES or name in TOKENIZER_FILES
    )


def file_digests(path: str | Path) -> dict[str, str]:
    """sha256 of each counted file under ``path`` (recursively), keyed by posix relative path, sorted."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root} is not a directory", field="checkpoint")
    counted = sorted(p for p in root.rglob("*") if p.is_file() and is_counted(p.name))
    if not counted:
        raise CheckpointError(f"checkpoint {root} holds no weight, config or tokenizer file", field="checkpoint")
    return {p.relative_to(root).as_posix(): _sha256_file(p) for p in counted}


def manifest_checksum(files: Mapping[str, str]) -> str:
    """``sha256:<hex>`` of the manifest lines ``<path> <digest>\\n`` in sorted path order."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name} {files[name]}\n".encode())
    return "sha256:" + h.hexdigest()


def checksum(path: str | Path) -> str:
    """The checkpoint's checksum, ``sha256:<hex>``."""
    return manifest_checksum(file_digests(path))


def verify(path: str | Path, expected: str, *, label: str = "", expected_files: Optional[Mapping[str, str]] = None) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` hashes to ``expected``.

    ``label`` names the version in the message (``model@version``); with ``expected_files``
    the message also names the files added, removed or changed.
    """
    files = file_digests(path)
    actual = manifest_checksum(files)
    if actual == expected:
        return
    who = f"version {label}" if label else "checkpoint"
    detail = _diff(expected_files, files) if expected_files else ""
    raise ChecksumMismatchError(
        f"checksum mismatch for {who} at {path}: expected {expected}, got {actual}{detail}", field="checksum"
    )


def verify_version(version: ModelVersion) -> None:
    """Verify a registered version's checkpoint against its recorded checksum."""
    verify(version.checkpoint, version.checksum, label=version.label, expected_files=version.files)


def make_version(model: str, version_id: str, checkpoint: str | Path, **fields: Any) -> ModelVersion:
    """A new version record with its checksum computed from the checkpoint on disk."""
    files = file_digests(checkpoint)
    return ModelVersion(
        model=model, version_id=version_id, checkpoint=str(checkpoint),
        checksum=manifest_checksum(files), files=files, **fields,
    )


def _diff(expected: Mapping[str, str], actual: Mapping[str, str]) -> str:
    changed = sorted(n for n in expected.keys() & actual.keys() if expected[n] != actual[n])
    added = sorted(actual.keys() - expected.keys())
    removed = sorted(expected.keys() - actual.keys())
    parts = [f"{what}: {', '.join(names)}" for what, names in
             (("changed", changed), ("added", added), ("removed", removed)) if names]
    return f" ({'; '.join(parts)})" if parts else ""


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
