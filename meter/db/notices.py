"""Postgres NOTIFY between meter processes: an admin change to keys, tenants or limits tells every
process's key cache to forget what it holds (and its leases to give back what they hold); a process
refused for want of headroom that other processes' leases hold asks them for it back."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# The payload is "*" (re-read every key: limits or credit changed) or the hash of a key that may no
# longer be honoured (revoked, rotated, its tenant suspended): never serve that one from cache again.
KEYS_CHANNEL = "meter_keys"
EVERY_KEY = "*"

# The payload is "<subject>,<subject>|<owner>": the subjects whose leases should be given back, and
# the process asking (which keeps its own).
RECLAIM_CHANNEL = "meter_reclaim"

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


async def keys_changed(conn: AsyncConnection) -> None:
    """Announce a change; delivered when the caller's transaction commits, never if it rolls back."""
    await conn.execute(_NOTIFY, {"channel": KEYS_CHANNEL, "payload": EVERY_KEY})


async def keys_withdrawn(conn: AsyncConnection, key_hashes: Iterable[str | None]) -> None:
    """Announce keys that may have stopped working, one notification per hash."""
    for key_hash in {h for h in key_hashes if h}:
        await conn.execute(_NOTIFY, {"channel": KEYS_CHANNEL, "payload": key_hash})


def reclaim_payload(subjects: Iterable[str], owner: str) -> str:
    return ",".join(subjects) + "|" + owner
