"""The hot path's SQL, written out: one key lookup, one batched ledger insert, the price table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.db.models import api_keys, limits, prices, tenants, usage_events
from meter.pricing import Price

_tenant_limits = limits.alias("tenant_limits")
_key_limits = limits.alias("key_limits")
_LIMIT_COLUMNS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "tokens_per_day",
    "tokens_per_month",
    "budget_usd_per_day",
    "budget_usd_per_month",
    "credit_balance_usd",
)
_MONEY_COLUMNS = ("budget_usd_per_day", "budget_usd_per_month", "credit_balance_usd")


def _is_limited(table: Any) -> Any:
    return or_(*(table.c[name].is_not(None) for name in _LIMIT_COLUMNS))


def _needs_price(table: Any) -> Any:
    return or_(*(table.c[name].is_not(None) for name in _MONEY_COLUMNS))


async def key_by_hash(conn: AsyncConnection, key_hash: str) -> dict[str, Any] | None:
    """The key with this hash, its tenant's status, and whether either has limits: or None."""
    query = (
        select(
            api_keys.c.id,
            api_keys.c.tenant_id,
            api_keys.c.status,
            api_keys.c.expires_at,
            api_keys.c.allowed_models,
            tenants.c.status.label("tenant_status"),
            func.coalesce(_is_limited(_tenant_limits), False).label("tenant_limited"),
            func.coalesce(_is_limited(_key_limits), False).label("key_limited"),
            func.coalesce(or_(_needs_price(_tenant_limits), _needs_price(_key_limits)), False).label("needs_price"),
        )
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .outerjoin(_tenant_limits, _tenant_limits.c.subject_id == api_keys.c.tenant_id)
        .outerjoin(_key_limits, _key_limits.c.subject_id == api_keys.c.id)
        .where(api_keys.c.key_hash == key_hash)
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


_insert_usage = insert(usage_events).on_conflict_do_nothing(index_elements=[usage_events.c.request_id])


async def insert_usage_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ledger rows; a row whose request_id is already there is skipped (retries are safe)."""
    await conn.execute(_insert_usage, list(rows))


_settle = text("SELECT meter_settle(CAST(:batch AS jsonb))")


async def settle(conn: AsyncConnection, settlements: Sequence[dict[str, Any]]) -> None:
    """Release the reservations of finished requests and count their actual usage (see meter_settle)."""
    await conn.execute(_settle, {"batch": json.dumps(list(settlements))})


async def load_prices(conn: AsyncConnection) -> list[Price]:
    result = await conn.execute(select(prices))
    return [Price(**row) for row in result.mappings()]
