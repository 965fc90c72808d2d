"""The ingress's LoRA adapter catalog: which adapters each base model serves, under which names.

An adapter is called ``<model>:<id>`` (its full name) or by an alias. Resolving a requested
model name gives the base model (routing, admission, quotas and metering are the base
model's) and a :class:`LoraRef` the engine request carries: the adapter's full name, its
PEFT directory and a revision (a hash of its files). Replicas load an adapter the first
time a request names it, so a replica started after the adapter was added (autoscaling, a
restart) needs no separate push; ``/admin/adapters`` pushes it to the live replicas at once
to validate it and take the load off the first request.

The catalog is shared by every ingress replica through a store (:class:`CanaryStore`:
Redis when ``canary.redis_url`` or ``tenants.redis_url`` is set, else in process). Each
replica keeps a copy for the request path (no store round trip per request) and reloads it
when the store's version token changes, looked at most every ``refresh_s``. An admin
change made through one replica is seen by the others within that period.

Store tables (values JSON, prefix ``fleetserve:`` in Redis):

- ``adapters``        full name -> :class:`AdapterEntry`
- ``adapter_names``   full name or alias -> full name: claimed one by one with put-if-absent,
                      so two replicas adding clashing names at once cannot both win
- ``adapters_meta``   ``version`` -> a token, new on every change

The config's ``models[].adapters`` are written to the store by the first replica that
starts (an adapter already there under that name is kept as it is).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from fleetserve.canary.store import CanaryStore, MemoryCanaryStore
from fleetserve.clock import Clock, SystemClock
from fleetserve.config import ADAPTER_ID_RE, MODEL_NAME_RE, ModelConfig
from fleetserve.engine.protocol import LoraRef
from fleetserve.errors import (ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError,
                               ServiceUnavailableError)
from fleetserve.tenants.store import STORE_ERRORS

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

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "AdapterEntry":
        d = json.loads(text)
        return cls(d["base"], d["id"], d["path"], d["revision"], tuple(d.get("aliases", ())))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


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


ENTRIES, NAMES, META = "adapters", "adapter_names", "adapters_meta"


class AdapterCatalog:
    """Adapters by full name and alias, for the base models in ``models``, shared through
    ``store``. Reads (``find``, ``get``, ``list``) are this replica's copy; writes go to the
    store first. Store errors on a write are a 503; on a refresh the copy is kept."""

    def __init__(self, models: Iterable[str], store: Optional[CanaryStore] = None, *, refresh_s: float = 2.0,
                 clock: Optional[Clock] = None, seed: Iterable[AdapterEntry] = ()):
        """``seed``: the config's adapters, served at once and written to the store on the
        first refresh (see the module docstring)."""
        self._models = set(models)
        self._store = store if store is not None else MemoryCanaryStore()
        self._refresh_s, self._clock = refresh_s, clock or SystemClock()
        self._seed = list(seed)
        self._entries: dict[str, AdapterEntry] = {}
        self._aliases: dict[str, str] = {}  # alias -> full name
        self._version: Optional[str] = None
        self._checked = float("-inf")
        self._down_logged = False
        for e in self._seed:
            self._check(e)
            self._index(e)

    @classmethod
    def from_config(cls, models: list[ModelConfig], store: Optional[CanaryStore] = None,
                    refresh_s: float = 2.0) -> "AdapterCatalog":
        seed = []
        for m in models:
            for a in m.adapters:
                try:
                    revision = adapter_revision(a.path)
                except InvalidRequestError as exc:  # replicas may see files this node does not
                    log.warning("adapter %s:%s: %s; serving it with an unknown revision", m.name, a.id, exc.message)
                    revision = "unverified"
                seed.append(AdapterEntry(m.name, a.id, a.path, revision, tuple(a.aliases)))
        return cls((m.name for m in models), store, refresh_s=refresh_s, seed=seed)

    # ----- reads (this replica's copy) ---------------------------------------------------

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

    # ----- sync with the store -----------------------------------------------------------

    async def refresh_if_due(self) -> None:
        """Reload when ``refresh_s`` has passed and the store's version changed; a store
        that is down keeps the copy (logged once per outage)."""
        if self._clock.now() - self._checked < self._refresh_s:
            return
        self._checked = self._clock.now()
        try:
            await self.reload(only_if_changed=True)
            self._down_logged = False
        except ServiceUnavailableError as exc:
            if not self._down_logged:
                log.warning("%s; serving the cached adapter catalog", exc.message)
                self._down_logged = True

    async def reload(self, only_if_changed: bool = False) -> None:
        """The store's catalog into this copy (the admin routes call it before they act)."""
        try:
            if self._seed:
                await self._write_seed()
            version = await self._store.get(META, "version")
            if only_if_changed and version is not None and version == self._version:
                return
            rows = await self._store.get_all(ENTRIES)
        except STORE_ERRORS as exc:
            raise ServiceUnavailableError(f"adapter store unreachable ({type(exc).__name__})",
                                          retry_after_s=1.0) from None
        self._entries, self._aliases = {}, {}
        for raw in rows.values():
            entry = AdapterEntry.from_json(raw)
            if entry.base in self._models:  # an adapter of a model this deployment no longer serves: skipped
                self._index(entry)
        self._version = version
        self._checked = self._clock.now()

    async def _write_seed(self) -> None:
        for entry in list(self._seed):
            if await self._store.get(ENTRIES, entry.name) is None:
                try:
                    await self._claim(entry)
                except ConflictError as exc:
                    log.warning("config adapter %s not added: %s", entry.name, exc.message)
            self._seed.remove(entry)

    # ----- writes (admin API) ------------------------------------------------------------

    async def put(self, entry: AdapterEntry) -> AdapterEntry:
        """Add ``entry`` (409 when its name or an alias is already a model, adapter or alias)."""
        self._check(entry)
        await self.reload()
        try:
            await self._claim(entry)
        except STORE_ERRORS as exc:
            raise ServiceUnavailableError(f"adapter store unreachable ({type(exc).__name__}); adapter not added",
                                          retry_after_s=1.0) from None
        self._index(entry)
        return entry

    async def remove(self, name: str) -> AdapterEntry:
        await self.reload()
        entry = self.get(name)
        try:
            await self._store.delete(ENTRIES, entry.name)
            for n in entry.names:
                await self._store.delete(NAMES, n)
            await self._bump()
        except STORE_ERRORS as exc:
            raise ServiceUnavailableError(f"adapter store unreachable ({type(exc).__name__}); adapter not removed",
                                          retry_after_s=1.0) from None
        self._entries.pop(entry.name, None)
        for alias in entry.aliases:
            self._aliases.pop(alias, None)
        return entry

    async def _claim(self, entry: AdapterEntry) -> None:
        """Claim every name of ``entry`` (put-if-absent, one writer wins each), then write it."""
        clash = [n for n in entry.names if n in self._models]
        claimed: list[str] = []
        for n in entry.names if not clash else ():
            if not await self._store.put_new(NAMES, n, entry.name):
                clash.append(n)
                break
            claimed.append(n)
        if clash:
            for n in claimed:  # give back what this attempt took
                await self._store.delete(NAMES, n)
            raise ConflictError(f"name(s) {clash} already in use", field="id")
        await self._store.put(ENTRIES, entry.name, entry.to_json())
        await self._bump()

    async def _bump(self) -> None:
        # This copy's version stays the one it loaded: a change another replica made since
        # then is picked up by the next refresh instead of being masked by this token.
        await self._store.put(META, "version", uuid.uuid4().hex)

    def _check(self, entry: AdapterEntry) -> None:
        if entry.base not in self._models:
            raise ModelNotFoundError(f"The model `{entry.base}` does not exist.", field="model")
        if not ADAPTER_ID_RE.match(entry.id):
            raise InvalidRequestError(f"id {entry.id!r} must match {ADAPTER_ID_RE.pattern}", field="id")
        for alias in entry.aliases:
            if not MODEL_NAME_RE.match(alias):
                raise InvalidRequestError(f"alias {alias!r} is not a valid model name", field="aliases")
        if len(set(entry.aliases)) != len(entry.aliases) or entry.name in entry.aliases:
            raise ConflictError(f"name(s) {list(entry.aliases)} repeat", field="id")

    def _index(self, entry: AdapterEntry) -> None:
        self._entries[entry.name] = entry
        self._aliases.update({alias: entry.name for alias in entry.aliases})
