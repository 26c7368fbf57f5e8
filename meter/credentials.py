"""Tenant key generation, hashing and display prefixes.

Keys are 256-bit random secrets, so one fast keyed hash is a safe lookup hash: there is nothing to
brute-force that a slow password hash would protect. Only the hash is stored: HMAC-SHA256 under a
server-side pepper (METER_KEY_PEPPER, never in the database), so a copy of the database alone
cannot even confirm a guessed key. Keys hashed before the pepper existed (plain SHA-256) still
work and are re-hashed on their first use (proxy/auth.py).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time

KEY_PREFIX = "sk-meter-"
# Shown to operators to tell keys apart: the fixed prefix plus the first characters of the secret.
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 6


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


# Marks a peppered hash; a legacy hash is 64 bare hex digits.
HASH_PREFIX = "hm1_"


class KeyHasher:
    def __init__(self, pepper: str) -> None:
        self._pepper = pepper.encode()
        # The same few keys call again and again: their hashes are remembered (bounded, per process).
        self.hash = functools.lru_cache(maxsize=4096)(self._hash)

    def _hash(self, secret: str) -> str:
        return HASH_PREFIX + hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def fingerprint(self) -> str:
        """Names the pepper without revealing it: stored in the database, so that a process with
        another pepper (whose hashes would match no key) refuses to start."""
        return hmac.new(self._pepper, b"meter key pepper fingerprint", hashlib.sha256).hexdigest()[:16]


def legacy_hash(secret: str) -> str:
    """The hash of keys issued before the pepper: plain SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_PREFIX_LEN]


def new_id(kind: str) -> str:
    """A sortable id: `kind_` + 12 hex digits of milliseconds + 16 random hex digits.

    Time-ordered ids keep the ledger's primary key index append-mostly and make
    `after=<id>` cursor pagination a plain comparison.
    """
    return f"{kind}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"
