"""Which adapters sit in the runner's slots: an LRU of at most ``num_slots`` resident adapters.

Requests pin the adapter they run with from admission to finish (``acquire`` / ``release``),
so a slot is never rewritten under a request that uses it. An adapter no request pins stays
resident (the next request for it costs nothing) until a new adapter needs its slot: the
least recently used unpinned one is evicted. When every slot is pinned by other adapters'
requests, ``acquire`` refuses with a retryable 503 (``can_acquire`` asks first).

Adapters are keyed by ``name@revision`` (:class:`LoraRef.key`): an adapter re-registered with
new weights under the same name never reuses the old one's slot or cached KV.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

from fleetserve.engine.protocol import LoraRef
from fleetserve.errors import ConflictError, ServiceUnavailableError


@dataclass(frozen=True)
class ResidentAdapter:
    """An adapter in a slot, and how many unfinished requests pin it."""

    name: str
    path: str
    revision: str
    slot: int
    active_requests: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class LoraManager:
    """LRU slot assignment. ``load(slot, ref)`` writes an adapter into a slot (raising leaves
    the slot free); ``clear(slot)`` zeroes one."""

    def __init__(self, num_slots: int, load: Callable[[int, LoraRef], None], clear: Callable[[int], None]):
        self.num_slots = num_slots
        self._load, self._clear = load, clear
        self._lru: OrderedDict[str, int] = OrderedDict()  # key -> slot, least recently used first
        self._refs: dict[str, LoraRef] = {}
        self._pins: Counter[str] = Counter()
        self.loads = 0  # adapters written into a slot so far (tests and stats)

    def _free_slot(self) -> Optional[int]:
        taken = set(self._lru.values())
        return next((s for s in range(self.num_slots) if s not in taken), None)

    def _victim(self) -> Optional[str]:
        return next((k for k in self._lru if not self._pins[k]), None)

    def can_acquire(self, ref: LoraRef) -> bool:
        return ref.key in self._lru or self._free_slot() is not None or self._victim() is not None

    def acquire(self, ref: LoraRef) -> int:
        """The slot holding ``ref``, loading it (evicting the LRU unpinned adapter) if needed; pinned."""
        key = ref.key
        if key not in self._lru:
            slot = self._free_slot()
            if slot is None:
                victim = self._victim()
                if victim is None:
                    raise ServiceUnavailableError(
                        f"all {self.num_slots} LoRA slots are in use by running requests of other adapters",
                        retry_after_s=1.0)
                slot = self._evict(victim)
            self._load(slot, ref)
            self.loads += 1
            self._lru[key], self._refs[key] = slot, ref
        self._lru.move_to_end(key)
        self._pins[key] += 1
        return self._lru[key]

    def release(self, key: str) -> None:
        if self._pins[key] > 0:
            self._pins[key] -= 1

    def preload(self, ref: LoraRef) -> int:
        """Load ``ref`` now (validating its files) without pinning it."""
        slot = self.acquire(ref)
        self.release(ref.key)
        return slot

    def _evict(self, key: str) -> int:
        slot = self._lru.pop(key)
        self._refs.pop(key, None)
        self._pins.pop(key, None)
        self._clear(slot)
        return slot

    def remove(self, name: str) -> int:
        """Evict every revision of adapter ``name``; 409 while a request still runs with it.
        Returns how many were resident."""
        keys = [k for k, ref in self._refs.items() if ref.name == name]
        busy = [k for k in keys if self._pins[k]]
        if busy:
            raise ConflictError(f"adapter {name!r} is in use by {sum(self._pins[k] for k in busy)} request(s)",
                                field="name")
        for k in keys:
            self._evict(k)
        return len(keys)

    def resident(self) -> list[ResidentAdapter]:
        return [ResidentAdapter(self._refs[k].name, self._refs[k].path, self._refs[k].revision, slot, self._pins[k])
                for k, slot in self._lru.items()]
