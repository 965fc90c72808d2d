"""API keys: generation, hashing and constant-time verification.

Keys look like ``fs-<43 url-safe chars>`` (256 random bits) so they are recognisable in
secret scanners and config files. Only ``sha256:<hex>`` of a key is ever stored: the hash
and its constant-time check are :mod:`fleetserve.credentials` (one rule, shared with
``metrics/``, which must not import ``tenants/``), re-exported here. Why a plain SHA-256
suffices is explained there; it holds only for generated keys, so never accept
user-chosen passwords as API keys.

Keys are never logged: nothing in this module formats a key into a message.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Optional

from fleetserve.credentials import HASH_PREFIX, hash_api_key, key_matches_any

__all__ = ["ADMIN_KEY_PREFIX", "HASH_PREFIX", "KEY_PREFIX", "generate_api_key", "hash_api_key", "key_matches",
           "key_matches_any", "strip_bearer"]

KEY_PREFIX = "fs-"
ADMIN_KEY_PREFIX = "fs-admin-"


def generate_api_key(prefix: str = KEY_PREFIX) -> str:
    """A fresh key with 256 bits of entropy."""
    return prefix + secrets.token_urlsafe(32)


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
