"""Usage: the ledger as the operator reads it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.params import Parameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter.db.models import usage_events


class UsageEvent(msgspec.Struct):
    request_id: str
    tenant_id: str
    key_id: str
    model: str | None
    endpoint: str
    stream: bool
    status: int
    error_type: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation_5m_input_tokens: int
    cache_creation_1h_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: str | None  # decimal string, exact
    partial: bool
    stop_reason: str | None
    upstream_request_id: str | None
    started_at: datetime
    finished_at: datetime
    duration_ms: int
    ttfb_ms: int | None


class UsageEventPage(msgspec.Struct):
    data: list[UsageEvent]
    next_cursor: str | None


def money(value: Decimal | None) -> str | None:
    """USD as a plain decimal string, without exponent or trailing zeros past the cent."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


async def list_events(conn: AsyncConnection, tenant_id: str | None, after: str | None, limit: int) -> UsageEventPage:
    """Events in request-id order (time order: ids are time-ordered); `after` is the cursor."""
    query = select(usage_events).order_by(usage_events.c.request_id).limit(limit + 1)
    if tenant_id:
        query = query.where(usage_events.c.tenant_id == tenant_id)
    if after:
        query = query.where(usage_events.c.request_id > after)
    rows = (await conn.execute(query)).mappings().all()
    events = [UsageEvent(**{**row, "cost_usd": money(row["cost_usd"])}) for row in rows[:limit]]
    return UsageEventPage(data=events, next_cursor=events[-1].request_id if len(rows) > limit else None)


class UsageController(Controller):
    @get("/usage/events", summary="Ledger rows, oldest first, with cursor pagination")
    async def events(
        self,
        db: AsyncEngine,
        tenant_id: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> UsageEventPage:
        async with db.connect() as conn:
            return await list_events(conn, tenant_id, after, limit)
