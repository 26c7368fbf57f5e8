"""The hot path's SQL, written out: one key lookup, one batched ledger insert, the price table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.db.models import api_keys, prices, tenants, usage_events
from meter.pricing import Price


async def key_by_hash(conn: AsyncConnection, key_hash: str) -> dict[str, Any] | None:
    """The key with this hash and its tenant's status, or None."""
    query = (
        select(
            api_keys.c.id,
            api_keys.c.tenant_id,
            api_keys.c.status,
            api_keys.c.expires_at,
            api_keys.c.allowed_models,
            tenants.c.status.label("tenant_status"),
        )
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .where(api_keys.c.key_hash == key_hash)
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


_insert_usage = insert(usage_events).on_conflict_do_nothing(index_elements=[usage_events.c.request_id])


async def insert_usage_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ledger rows; a row whose request_id is already there is skipped (retries are safe)."""
    await conn.execute(_insert_usage, list(rows))


async def load_prices(conn: AsyncConnection) -> list[Price]:
    result = await conn.execute(select(prices))
    return [Price(**row) for row in result.mappings()]
