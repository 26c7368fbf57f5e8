"""Usage: the ledger as the operator reads it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get
from litestar.params import Parameter
from sqlalchemy import func, literal, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money, periods
from meter.admin.schema import ERRORS
from meter.admin.tenants import get_tenant
from meter.db.models import usage_daily, usage_events
from meter.errors import InvalidRequest


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
    server_tool_use: dict[str, int] | None
    service_tier: str | None
    inference_geo: str | None
    speed: str | None
    iterations: list[dict[str, Any]] | None
    usage_extra: dict[str, Any] | None
    response_model: str | None
    fees: dict[str, dict[str, Any]] | None  # {"web_search_requests": {"units": 3, "usd": "0.03"}}
    long_context: bool


class UsageEventPage(msgspec.Struct):
    data: list[UsageEvent]
    # Where the next page starts: pass it back as `after`. Always set once the feed has a row, also
    # on the last page, so a consumer that follows it sees every row exactly once.
    next_cursor: str | None
    has_more: bool


# The oldest transaction still running: every row of a smaller txid has committed (or never will).
_HORIZON = text("(pg_snapshot_xmin(pg_current_snapshot())::text)::bigint")
_FEED_ORDER = (usage_events.c.txid, usage_events.c.seq)
_EVENT_FIELDS = UsageEvent.__struct_fields__


async def list_events(conn: AsyncConnection, tenant_id: str | None, after: str | None, limit: int) -> UsageEventPage:
    """Events in commit order. A row is handed out only once every transaction that could still
    commit before it has ended, so a cursor never passes a row that lands later (a slow stream's)."""
    txid, seq = _position(after)
    query = (
        select(usage_events)
        .where(usage_events.c.txid < _HORIZON, tuple_(*_FEED_ORDER) > tuple_(literal(txid), literal(seq)))
        .order_by(*_FEED_ORDER)
        .limit(limit + 1)
    )
    if tenant_id:
        query = query.where(usage_events.c.tenant_id == tenant_id)
    rows = (await conn.execute(query)).mappings().all()
    page = rows[:limit]
    events = [
        UsageEvent(**{**{name: row[name] for name in _EVENT_FIELDS}, "cost_usd": money.usd_or_none(row["cost_usd"])})
        for row in page
    ]
    next_cursor = f"{page[-1]['txid']}.{page[-1]['seq']}" if page else after
    return UsageEventPage(data=events, next_cursor=next_cursor, has_more=len(rows) > limit)


def _position(cursor: str | None) -> tuple[int, int]:
    if not cursor:
        return -1, -1
    txid, dot, seq = cursor.partition(".")
    if not (dot and txid.isdigit() and seq.isdigit() and len(cursor) <= 40):
        raise InvalidRequest("after: not a cursor of this feed (pass back a next_cursor it returned)")
    return int(txid), int(seq)


class UsageRow(msgspec.Struct):
    group: str  # the day (YYYY-MM-DD), the model, or the key id
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: str
    unpriced_requests: int


class UsageReport(msgspec.Struct):
    tenant_id: str
    group_by: str
    start: date
    end: date  # exclusive
    data: list[UsageRow]
    next_cursor: str | None = None


GroupBy = Literal["day", "model", "key"]
_GROUP_COLUMNS = {"day": usage_daily.c.day, "model": usage_daily.c.model, "key": usage_daily.c.key_id}


def default_period(start: date | None, end: date | None) -> tuple[date, date]:
    """Both bounds default to the current UTC month; `end` is exclusive."""
    start = start or periods.month_start(periods.today())
    if end is None and start > periods.LAST_MONTH:
        raise InvalidRequest("from: must be before 9999-12 unless `to` is given")
    if end is None:
        end = periods.next_month(start)
    if end <= start:
        raise InvalidRequest("to: must be after from")
    return start, end


async def tenant_usage(
    conn: AsyncConnection, tenant_id: str, start: date | None, end: date | None, group_by: GroupBy
) -> UsageReport:
    """Usage from the daily rollups: one small index range per tenant, however large the ledger."""
    await get_tenant(conn, tenant_id)
    start, end = default_period(start, end)
    group = _GROUP_COLUMNS[group_by]
    sums = [
        func.sum(usage_daily.c[name]).label(name)
        for name in (
            "requests",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "cost_usd",
            "unpriced_requests",
        )
    ]
    query = (
        select(group.label("group"), *sums)
        .where(usage_daily.c.tenant_id == tenant_id, usage_daily.c.day >= start, usage_daily.c.day < end)
        .group_by(group)
        .order_by(group)
    )
    rows = (await conn.execute(query)).mappings().all()
    # sum() of bigints comes back as numeric: counts go out as integers, money as a decimal string.
    data = [
        UsageRow(
            **{name: int(value) for name, value in row.items() if name not in ("group", "cost_usd")},
            group=str(row["group"]),
            cost_usd=money.usd(row["cost_usd"] or 0),
        )
        for row in rows
    ]
    return UsageReport(tenant_id=tenant_id, group_by=group_by, start=start, end=end, data=data)


class DayModelUsage(msgspec.Struct):
    day: date
    model: str  # '' for requests refused before a model was known
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: str
    unpriced_requests: int


async def usage_by_day_and_model(
    conn: AsyncConnection, tenant_id: str | None, start: date | None, end: date | None
) -> tuple[date, date, list[DayModelUsage]]:
    """Usage per UTC day and model, of one tenant or (None) of all, from the daily rollups; the
    period as `default_period` reads it, `end` exclusive."""
    if tenant_id is not None:
        await get_tenant(conn, tenant_id)
    start, end = default_period(start, end)
    names = [name for name in DayModelUsage.__struct_fields__ if name not in ("day", "model")]
    query = (
        select(usage_daily.c.day, usage_daily.c.model, *(func.sum(usage_daily.c[name]).label(name) for name in names))
        .where(usage_daily.c.day >= start, usage_daily.c.day < end)
        .group_by(usage_daily.c.day, usage_daily.c.model)
        .order_by(usage_daily.c.day, usage_daily.c.model)
    )
    if tenant_id is not None:
        query = query.where(usage_daily.c.tenant_id == tenant_id)
    rows = (await conn.execute(query)).mappings().all()
    data = [
        DayModelUsage(
            **{name: int(row[name]) for name in names if name != "cost_usd"},
            day=row["day"],
            model=row["model"],
            cost_usd=money.usd(row["cost_usd"] or 0),
        )
        for row in rows
    ]
    return start, end, data


class UsageController(Controller):
    @get("/tenants/{tenant_id:str}/usage", summary="A tenant's usage by day, model or key (UTC days)", responses=ERRORS)
    async def tenant(
        self,
        tenant_id: str,
        db: AsyncEngine,
        start: Annotated[date | None, Parameter(query="from")] = None,
        end: Annotated[date | None, Parameter(query="to", description="exclusive")] = None,
        group_by: GroupBy = "day",
    ) -> UsageReport:
        async with db.connect() as conn:
            return await tenant_usage(conn, tenant_id, start, end, group_by)

    @get("/usage/events", summary="Ledger rows in commit order: follow next_cursor to export them", responses=ERRORS)
    async def events(
        self,
        db: AsyncEngine,
        tenant_id: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> UsageEventPage:
        async with db.connect() as conn:
            return await list_events(conn, tenant_id, after, limit)
