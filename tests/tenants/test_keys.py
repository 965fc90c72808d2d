import logging

import pytest

from fleetserve.tenants.config import TenantSpec
from fleetserve.tenants.keys import (
    KEY_PREFIX,
    generate_api_key,
    hash_api_key,
    key_matches,
    key_matches_any,
    strip_bearer,
)
from tests.tenants.factories import make_spec


def test_generated_keys_are_prefixed_unique_and_long():
    keys = {generate_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith(KEY_PREFIX) and len(k) >= 40 for k in keys)


def test_hash_is_sha256_and_matches_only_the_same_key():
    k = generate_api_key()
    h = hash_api_key(k)
    assert h.startswith("sha256:") and len(h) == 7 + 64 and k not in h
    assert key_matches(k, h)
    assert not key_matches(k + "x", h)
    assert key_matches_any(k, [hash_api_key("other"), h])
    assert not key_matches_any(k, [hash_api_key("other")])


def test_comparison_is_constant_time(monkeypatch):
    calls = []
    import fleetserve.tenants.keys as keys_mod

    real = keys_mod.hmac.compare_digest
    monkeypatch.setattr(keys_mod.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    key_matches_any("fs-x", [hash_api_key("a"), hash_api_key("fs-x"), hash_api_key("b")])
    assert len(calls) == 3  # compared against every hash, no early exit


@pytest.mark.parametrize("raw,expected", [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("abc", "abc"), ("", None), (None, None), ("Bearer ", None)])
def test_strip_bearer(raw, expected):
    assert strip_bearer(raw) == expected


def test_spec_repr_and_public_dict_hide_key_hashes(caplog):
    spec = make_spec(key="fs-secret-key")
    h = spec.api_key_hashes[0]
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("spec %s %r", spec, spec)
    assert h not in caplog.text and h[7:20] not in repr(spec)
    assert "api_key_hashes" not in spec.public_dict() and spec.public_dict()["num_keys"] == 1


def test_plaintext_key_in_yaml_is_rejected():
    with pytest.raises(ValueError, match="api_key_hashes"):
        TenantSpec(id="a", api_key_hashes=["fs-plaintext-key"])
