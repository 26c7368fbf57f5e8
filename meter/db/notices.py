"""Postgres NOTIFY between meter processes: an admin change to keys, tenants or limits tells every
process's key cache to forget what it holds."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# The payload is a key hash, or "*" for "forget them all".
KEYS_CHANNEL = "meter_keys"


async def keys_changed(conn: AsyncConnection, key_hash: str = "*") -> None:
    """Announce a change; delivered when the caller's transaction commits, never if it rolls back."""
    await conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": KEYS_CHANNEL, "payload": key_hash})
