"""API keys: generation, hashing and constant-time verification.

Keys look like ``fs-<43 url-safe chars>`` (256 random bits) so they are recognisable in
secret scanners and config files. Only ``sha256:<hex>`` of a key is ever stored.

Why a plain SHA-256 and not bcrypt/argon2: slow password hashes protect *low-entropy*
secrets from offline guessing. A 256-bit random key cannot be guessed whatever the hash
speed, and every request verifies a key, so a slow hash would only add latency. (This
holds only for generated keys; never accept user-chosen passwords as API keys.)

Keys are never logged: nothing in this module formats a key into a message.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Iterable, Optional

KEY_PREFIX = "fs-"
ADMIN_KEY_PREFIX = "fs-admin-"
HASH_PREFIX = "sha256:"


def generate_api_key(prefix: str = KEY_PREFIX) -> str:
    """A fresh key with 256 bits of entropy."""
    return prefix + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The stored form of a key: ``sha256:<64 hex>``."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def strip_bearer(value: Optional[str]) -> Optional[str]:
    """Accept either a raw key or an ``Authorization`` header value (``Bearer <key>``)."""
    if value is None:
        return None
    v = value.strip()
    scheme, _, rest = v.partition(" ")
    if scheme.lower() == "bearer":
        v = rest.strip()
    return v or None


def key_matches(key: str, key_hash: str) -> bool:
    """Constant-time comparison of a presented key against one stored hash."""
    return hmac.compare_digest(hash_api_key(key).encode(), key_hash.encode())


def key_matches_any(key: str, key_hashes: Iterable[str]) -> bool:
    """True if the key matches one of the hashes; compares against all of them (no early exit)."""
    presented = hash_api_key(key).encode()
    found = False
    for h in key_hashes:
        found |= hmac.compare_digest(presented, h.encode())
    return found
