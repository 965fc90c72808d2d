"""The LoRA slot LRU against a recording fake loader: eviction order, pins, removal, failures."""

from __future__ import annotations

import pytest

from fleetserve.engine.lora.manager import LoraManager
from fleetserve.engine.protocol import LoraRef
from fleetserve.errors import ConfigError, ConflictError, ServiceUnavailableError


class Recorder:
    def __init__(self, fail: frozenset = frozenset()):
        self.slots: dict[int, str] = {}
        self.fail = fail

    def load(self, slot: int, ref: LoraRef) -> None:
        if ref.name in self.fail:
            raise ConfigError(f"{ref.name} does not fit", field="path")
        self.slots[slot] = ref.key

    def clear(self, slot: int) -> None:
        self.slots.pop(slot, None)


def ref(name: str, revision: str = "r1") -> LoraRef:
    return LoraRef(name, f"/adapters/{name}", revision)


def make(n: int = 2, **kw) -> tuple[LoraManager, Recorder]:
    rec = Recorder(**kw)
    return LoraManager(n, rec.load, rec.clear), rec


def test_least_recently_used_unpinned_adapter_is_evicted():
    m, rec = make()
    a, b, c = ref("a"), ref("b"), ref("c")
    assert m.preload(a) == 0 and m.preload(b) == 1
    m.preload(a)  # a is now the most recent: b goes first
    assert m.preload(c) == 1 and rec.slots == {0: a.key, 1: c.key}
    assert [r.name for r in m.resident()] == ["a", "c"] and m.loads == 3


def test_pinned_adapters_are_never_evicted_and_a_full_house_refuses():
    m, rec = make()
    a, b, c = ref("a"), ref("b"), ref("c")
    m.acquire(a), m.acquire(b)
    assert not m.can_acquire(c)
    with pytest.raises(ServiceUnavailableError):
        m.acquire(c)
    assert m.can_acquire(a) and m.acquire(a) == 0  # already resident: just another pin
    m.release(b.key)
    assert m.acquire(c) == 1 and rec.slots[1] == c.key
    assert {r.name: r.active_requests for r in m.resident()} == {"a": 2, "c": 1}


def test_new_revision_is_a_different_adapter_and_remove_takes_every_revision():
    m, rec = make(3)
    old, new = ref("a", "r1"), ref("a", "r2")
    assert m.preload(old) != m.preload(new)
    m.acquire(new)
    with pytest.raises(ConflictError):
        m.remove("a")
    m.release(new.key)
    assert m.remove("a") == 2 and rec.slots == {} and m.resident() == []


def test_a_load_that_fails_leaves_the_slot_free():
    m, rec = make(1, fail=frozenset({"bad"}))
    with pytest.raises(ConfigError):
        m.acquire(ref("bad"))
    assert m.resident() == [] and m.acquire(ref("good")) == 0
