"""The ingress's adapter catalog: names, aliases, clashes, revisions."""

from __future__ import annotations

import pytest

from fleetserve.api.adapters import AdapterCatalog, AdapterEntry, adapter_revision
from fleetserve.errors import ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError


def entry(id: str = "a", aliases=(), base: str = "m") -> AdapterEntry:
    return AdapterEntry(base, id, f"/p/{id}", "rev", tuple(aliases))


def test_full_names_and_aliases_resolve_to_one_entry():
    cat = AdapterCatalog(["m", "n"])
    e = cat.put(entry("a", ["alias-a"]))
    assert cat.find("m:a") is e and cat.find("alias-a") is e and cat.find("m") is None
    assert e.ref.name == "m:a" and e.ref.key == "m:a@rev"
    assert cat.remove("alias-a") is e and cat.find("m:a") is None and cat.find("alias-a") is None
    with pytest.raises(NotFoundError):
        cat.get("m:a")


@pytest.mark.parametrize("clash", [entry("a"), entry("b", ["m:a"]), entry("b", ["n"]), entry("b", ["x", "x"]),
                                   entry("c", ["alias-a"])])
def test_a_name_in_use_is_a_conflict(clash):
    cat = AdapterCatalog(["m", "n"])
    cat.put(entry("a", ["alias-a"]))
    with pytest.raises(ConflictError):
        cat.put(clash)
    assert [e.name for e in cat.list()] == ["m:a"]


def test_unknown_model_and_bad_ids_are_refused():
    cat = AdapterCatalog(["m"])
    with pytest.raises(ModelNotFoundError):
        cat.put(entry(base="nope"))
    with pytest.raises(InvalidRequestError):
        cat.put(entry(id="a:b"))


def test_revision_changes_with_the_weights(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"one")
    first = adapter_revision(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"two")
    assert adapter_revision(tmp_path) != first
    with pytest.raises(InvalidRequestError):
        adapter_revision(tmp_path / "missing")
