"""Tenant key generation, hashing and display prefixes.

Keys are 256-bit random secrets, so a single SHA-256 is a safe and fast lookup hash: there is
nothing to brute-force that a slow password hash would protect. Only the hash is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import time

KEY_PREFIX = "sk-meter-"
# Shown to operators to tell keys apart: the fixed prefix plus the first characters of the secret.
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 6


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_PREFIX_LEN]


def new_id(kind: str) -> str:
    """A sortable id: `kind_` + 12 hex digits of milliseconds + 16 random hex digits.

    Time-ordered ids keep the ledger's primary key index append-mostly and make
    `after=<id>` cursor pagination a plain comparison.
    """
    return f"{kind}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"
