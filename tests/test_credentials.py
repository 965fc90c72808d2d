"""One hashing rule for every stored secret (API keys, the admin key, the scrape token):
``fleetserve.credentials``, shared by ``tenants/``, ``metrics/`` and ``exposure``
(tests/metrics/test_server.py checks the listener's auth with it over a real socket)."""

import hashlib

from fleetserve import credentials, exposure
from fleetserve.tenants import keys


def test_every_layer_uses_the_one_hash():
    assert keys.hash_api_key is credentials.hash_api_key and keys.key_matches_any is credentials.key_matches_any
    assert credentials.hash_api_key("fs-x") == "sha256:" + hashlib.sha256(b"fs-x").hexdigest()
    assert credentials.hash_api_key(exposure.PLACEHOLDER_ADMIN_KEYS[0]) in exposure.PLACEHOLDER_ADMIN_HASHES


def test_a_match_is_checked_against_every_hash():
    hashes = [credentials.hash_api_key(k) for k in ("a", "b", "c")]
    assert credentials.key_matches_any("b", hashes) and not credentials.key_matches_any("d", hashes)
    assert not credentials.key_matches_any("a", [])
