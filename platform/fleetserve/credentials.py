"""The stored form of a secret (API keys, the admin key, the metrics scrape token) and its
constant-time check: the one hashing rule every layer shares.

Only ``sha256:<hex>`` of a secret is ever stored or shipped. Why a plain SHA-256 and not
bcrypt/argon2: slow password hashes protect *low-entropy* secrets from offline guessing; a
256-bit random key cannot be guessed whatever the hash speed, and every request verifies a
key, so a slow hash would only add latency (``tenants/keys.py`` generates the keys).

Lowest layer (beside ``errors`` and ``clock``) so that ``metrics/`` and ``exposure`` use it
without importing ``tenants/``. Nothing here formats a secret into a message.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

HASH_PREFIX = "sha256:"


def hash_api_key(key: str) -> str:
    """The stored form of a key or token: ``sha256:<64 hex>``."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches_any(key: str, key_hashes: Iterable[str]) -> bool:
    """True if the key matches one of the hashes; compares against all of them (no early exit,
    so the time taken does not tell which one matched)."""
    presented = hash_api_key(key).encode()
    found = False
    for h in key_hashes:
        found |= hmac.compare_digest(presented, h.encode())
    return found
