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
import os
import secrets
import threading
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
    return f"{kind}_{time.time_ns() // 1_000_000:012x}{_random_hex16()}"


class _RandomHex:
    """16 hex digits of os.urandom at a time, drawn from 4 KiB read at once: one system call per
    512 ids instead of one per id (a request id is made for every request). Reset in a forked
    child, which must not hand out its parent's bytes again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = ""
        self._at = 0

    def __call__(self) -> str:
        with self._lock:
            if self._at >= len(self._pool):
                self._pool, self._at = os.urandom(4096).hex(), 0
            self._at += 16
            return self._pool[self._at - 16 : self._at]

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._at = "", 0


_random_hex16 = _RandomHex()
os.register_at_fork(after_in_child=_random_hex16.reset)
