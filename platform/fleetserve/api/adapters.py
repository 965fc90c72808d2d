"""The ingress's LoRA adapter catalog: which adapters each base model serves, under which names.

An adapter is called ``<model>:<id>`` (its full name) or by an alias. Resolving a requested
model name gives the base model (routing, admission, quotas and metering are the base
model's) and a :class:`LoraRef` the engine request carries: the adapter's full name, its
PEFT directory and a revision (a hash of its files). Replicas load an adapter the first
time a request names it, so a replica started after the adapter was added (autoscaling, a
restart) needs no separate push; ``/admin/adapters`` pushes it to the live replicas at once
to validate it and take the load off the first request.

The catalog lives in each ingress process: seeded from the config's ``models[].adapters``,
changed at runtime through the admin API of the ingress replica that received the call
(docs/lora.md says what that means with several ingress replicas).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from fleetserve.config import ADAPTER_ID_RE, MODEL_NAME_RE, ModelConfig
from fleetserve.engine.protocol import LoraRef
from fleetserve.errors import ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterEntry:
    """One served adapter: base model, id, files and the names it answers to."""

    base: str
    id: str
    path: str
    revision: str
    aliases: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.base}:{self.id}"

    @property
    def ref(self) -> LoraRef:
        return LoraRef(self.name, self.path, self.revision)

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.base, "id": self.id, "path": self.path, "revision": self.revision,
                "aliases": list(self.aliases)}


def adapter_revision(path: str | Path) -> str:
    """A short hash of the adapter's config and weights (InvalidRequestError when unreadable)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p / "adapter_config.json", *sorted(p.glob("adapter_model*.safetensors"))]
    if len(files) < 2:
        raise InvalidRequestError(f"{p} holds no adapter_model.safetensors", field="path")
    try:
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    except OSError as exc:
        raise InvalidRequestError(f"cannot read the adapter at {p}: {exc.strerror or exc}", field="path") from None
    return h.hexdigest()[:16]


class AdapterCatalog:
    """Adapters by full name and alias, for the base models in ``models``."""

    def __init__(self, models: Iterable[str]):
        self._models = set(models)
        self._entries: dict[str, AdapterEntry] = {}
        self._aliases: dict[str, str] = {}  # alias -> full name

    @classmethod
    def from_config(cls, models: list[ModelConfig]) -> "AdapterCatalog":
        catalog = cls(m.name for m in models)
        for m in models:
            for a in m.adapters:
                try:
                    revision = adapter_revision(a.path)
                except InvalidRequestError as exc:  # replicas may see files this node does not
                    log.warning("adapter %s:%s: %s; serving it with an unknown revision", m.name, a.id, exc.message)
                    revision = "unverified"
                catalog.put(AdapterEntry(m.name, a.id, a.path, revision, tuple(a.aliases)))
        return catalog

    def _taken(self, name: str) -> bool:
        return name in self._models or name in self._entries or name in self._aliases

    def put(self, entry: AdapterEntry) -> AdapterEntry:
        """Add ``entry`` (409 when its name or an alias is already a model, adapter or alias)."""
        if entry.base not in self._models:
            raise ModelNotFoundError(f"The model `{entry.base}` does not exist.", field="model")
        if not ADAPTER_ID_RE.match(entry.id):
            raise InvalidRequestError(f"id {entry.id!r} must match {ADAPTER_ID_RE.pattern}", field="id")
        for alias in entry.aliases:
            if not MODEL_NAME_RE.match(alias):
                raise InvalidRequestError(f"alias {alias!r} is not a valid model name", field="aliases")
        clash = [n for n in (entry.name, *entry.aliases) if self._taken(n)]
        if clash or len(set(entry.aliases)) != len(entry.aliases):
            raise ConflictError(f"name(s) {clash or list(entry.aliases)} already in use", field="id")
        self._entries[entry.name] = entry
        self._aliases.update({alias: entry.name for alias in entry.aliases})
        return entry

    def remove(self, name: str) -> AdapterEntry:
        entry = self.get(name)
        del self._entries[entry.name]
        for alias in entry.aliases:
            self._aliases.pop(alias, None)
        return entry

    def get(self, name: str) -> AdapterEntry:
        """The adapter called ``name`` (full name or alias); 404 otherwise."""
        entry = self.find(name)
        if entry is None:
            raise NotFoundError(f"no adapter `{name}`", field="name")
        return entry

    def find(self, name: str) -> Optional[AdapterEntry]:
        return self._entries.get(self._aliases.get(name, name))

    def list(self, model: Optional[str] = None) -> list[AdapterEntry]:
        return sorted((e for e in self._entries.values() if model is None or e.base == model), key=lambda e: e.name)
