"""Who may reach a listener, and whether an admin key is strong enough for that.

A key that guards an API reachable only from this machine (loopback) may be anything: it is
a local experiment. Beyond loopback the admin key guards every tenant, so a short,
low-entropy or published placeholder key refuses to start (config validation, the CLI's
environment key and the Kubernetes entry point all apply :func:`admin_key_problem`).
Messages never contain the key.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from typing import Optional

from fleetserve.credentials import hash_api_key

# Keys that anyone reading this repository or its docs knows (placeholders in examples).
# Their hashes too, for configs that carry only ``admin_key_hash``.
PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "example", "placeholder", "replace", "your-",
                     "dummy", "password", "0123456789", "xxxx", "todo")
PLACEHOLDER_ADMIN_KEYS = (
    "fs-admin-example-000000000000000000000000000000",  # tenants/example.yaml until issue 25
    "change-me-admin-key-0123456789",  # deployments/gpu-vllm.yaml until issue 25
    "local-admin-key-0123456789abcdef",  # deployments/two-models.yaml until issue 25
)
# The stored form of each.
PLACEHOLDER_ADMIN_HASHES = frozenset(hash_api_key(k) for k in PLACEHOLDER_ADMIN_KEYS)
MIN_ADMIN_KEY_CHARS = 32
MIN_ADMIN_KEY_BITS = 128.0


def estimated_bits(key: str) -> float:
    """Length times the Shannon entropy of the key's own character frequencies: a crude upper
    bound on a human-made key's strength, and about 5.3 bits a character for a generated one."""
    counts = Counter(key)
    return max(0.0, -sum(c * math.log2(c / len(key)) for c in counts.values()))


def admin_key_problem(key: str) -> Optional[str]:
    """Why ``key`` is too weak to guard an admin API reachable from other hosts (None: fine)."""
    lowered = key.lower()
    word = next((w for w in PLACEHOLDER_WORDS if w in lowered), None)
    if word is not None:
        return f"it looks like a placeholder (contains {word!r})"
    if key in PLACEHOLDER_ADMIN_KEYS:
        return "it is a placeholder published in fleetserve's examples"
    if len(key) < MIN_ADMIN_KEY_CHARS:
        return f"it is shorter than {MIN_ADMIN_KEY_CHARS} characters"
    if estimated_bits(key) < MIN_ADMIN_KEY_BITS:
        return f"it has too little entropy (about {estimated_bits(key):.0f} bits, under {MIN_ADMIN_KEY_BITS:.0f})"
    return None


def is_loopback(host: str) -> bool:
    """True for an interface only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: assume it is reachable from elsewhere


def refusal(problem: str, host: str, where: str) -> str:
    """The message a start refused for a weak admin key shows (never the key itself)."""
    return (f"{where}: refusing to serve the admin API on {host} (not loopback) with this admin key: {problem}. "
            f"Generate one with `python -c \"from fleetserve.tenants.keys import generate_api_key as g; "
            f"print(g('fs-admin-'))\"`, or bind the admin API to 127.0.0.1 (server.admin_host with server.admin_port, "
            f"or server.host).")
