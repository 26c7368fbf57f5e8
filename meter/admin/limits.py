"""Limits of a tenant or a key: requests and tokens per minute, concurrency, tokens and USD per
day and month. Setting limits on a subject for the first time counts what it already used this
UTC day and month, from the ledger."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, put
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money, periods
from meter.admin import audit
from meter.admin.schema import ERRORS, Usd, check_usd
from meter.db import notices
from meter.db.models import LIMIT_SETTINGS, api_keys, limits, tenants, usage_events
from meter.errors import NotFound
from meter.proxy.auth import KeyCache
from meter.usage import total_tokens_of

Count = Annotated[int, msgspec.Meta(ge=0)]


class LimitsSpec(msgspec.Struct, forbid_unknown_fields=True):
    """Every limit; null (or absent) means no limit. USD as a decimal string or number."""

    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None
    max_concurrent_requests: Count | None = None
    tokens_per_day: Count | None = None
    tokens_per_month: Count | None = None
    budget_usd_per_day: Usd | None = None
    budget_usd_per_month: Usd | None = None

    def __post_init__(self) -> None:
        check_usd("budget_usd_per_day", self.budget_usd_per_day)
        check_usd("budget_usd_per_month", self.budget_usd_per_month)


class PeriodUsage(msgspec.Struct):
    tokens: int
    cost_usd: str


class LimitsView(msgspec.Struct):
    subject_id: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent_requests: int | None
    tokens_per_day: int | None
    tokens_per_month: int | None
    budget_usd_per_day: str | None
    budget_usd_per_month: str | None
    in_flight: int
    today: PeriodUsage
    this_month: PeriodUsage


async def tenant_of(conn: AsyncConnection, subject_id: str) -> str:
    """The tenant a subject (tenant or key id) belongs to; NotFound if there is none."""
    if subject_id.startswith("key_"):
        tenant_id = (await conn.execute(select(api_keys.c.tenant_id).where(api_keys.c.id == subject_id))).scalar()
    else:
        tenant_id = (await conn.execute(select(tenants.c.id).where(tenants.c.id == subject_id))).scalar()
    if tenant_id is None:
        raise NotFound(f"No tenant or key with id {subject_id!r}.")
    return str(tenant_id)


async def ensure_limits_row(conn: AsyncConnection, subject_id: str, tenant_id: str) -> None:
    """Create the subject's limits row if missing, starting its counters at its usage so far."""
    column = usage_events.c.key_id if subject_id.startswith("key_") else usage_events.c.tenant_id
    day = periods.today()
    month = periods.month_start(day)
    tokens = total_tokens_of(usage_events.c)

    def used(amount: Any, since: date) -> Any:
        return (
            select(func.coalesce(func.sum(amount), 0))
            .where(column == subject_id, usage_events.c.started_at >= periods.midnight(since))
            .scalar_subquery()
        )

    await conn.execute(
        insert(limits)
        .values(
            subject_id=subject_id,
            tenant_id=tenant_id,
            day=day,
            month=month,
            day_tokens=used(tokens, day),
            day_usd=used(func.coalesce(usage_events.c.cost_usd, 0), day),
            month_tokens=used(tokens, month),
            month_usd=used(func.coalesce(usage_events.c.cost_usd, 0), month),
        )
        .on_conflict_do_nothing(index_elements=[limits.c.subject_id])
    )


async def set_limits(conn: AsyncConnection, subject_id: str, spec: LimitsSpec, actor: str) -> LimitsView:
    tenant_id = await tenant_of(conn, subject_id)
    await ensure_limits_row(conn, subject_id, tenant_id)
    values = {name: getattr(spec, name) for name in LIMIT_SETTINGS}
    await conn.execute(limits.update().where(limits.c.subject_id == subject_id).values(**values, updated_at=func.now()))
    await audit.record(conn, actor, "limits.set", subject_id, values)
    await notices.keys_changed(conn)  # cached keys carry whether they are limited
    return await read_limits(conn, subject_id)


async def read_limits(conn: AsyncConnection, subject_id: str) -> LimitsView:
    await tenant_of(conn, subject_id)
    today = periods.today()
    this_month = periods.month_start(today)
    row = (
        (
            await conn.execute(
                select(
                    *(limits.c[name] for name in LIMIT_SETTINGS),
                    limits.c.in_flight,
                    (limits.c.day == today).label("same_day"),
                    (limits.c.month == this_month).label("same_month"),
                    limits.c.day_tokens,
                    limits.c.day_usd,
                    limits.c.month_tokens,
                    limits.c.month_usd,
                ).where(limits.c.subject_id == subject_id)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        empty = PeriodUsage(tokens=0, cost_usd="0.00")
        return LimitsView(subject_id, None, None, None, None, None, None, None, 0, empty, empty)
    return LimitsView(
        subject_id=subject_id,
        requests_per_minute=row["requests_per_minute"],
        tokens_per_minute=row["tokens_per_minute"],
        max_concurrent_requests=row["max_concurrent_requests"],
        tokens_per_day=row["tokens_per_day"],
        tokens_per_month=row["tokens_per_month"],
        budget_usd_per_day=money.usd_or_none(row["budget_usd_per_day"]),
        budget_usd_per_month=money.usd_or_none(row["budget_usd_per_month"]),
        in_flight=row["in_flight"],
        today=_period(row["same_day"], row["day_tokens"], row["day_usd"]),
        this_month=_period(row["same_month"], row["month_tokens"], row["month_usd"]),
    )


def _period(current: bool | None, tokens: int, spent: Decimal) -> PeriodUsage:
    if not current:  # the counters are of an earlier period: nothing used in this one yet
        return PeriodUsage(tokens=0, cost_usd="0.00")
    return PeriodUsage(tokens=tokens, cost_usd=money.usd(spent))


class LimitsController(Controller):
    @put("/tenants/{tenant_id:str}/limits", summary="Set a tenant's limits (null = no limit)", responses=ERRORS)
    async def put_tenant(
        self, tenant_id: str, data: LimitsSpec, db: AsyncEngine, keys: KeyCache, actor: str
    ) -> LimitsView:
        return await _put(db, keys, _tenant_subject(tenant_id), data, actor)

    @get(
        "/tenants/{tenant_id:str}/limits",
        summary="A tenant's limits and its usage today and this month",
        responses=ERRORS,
    )
    async def get_tenant(self, tenant_id: str, db: AsyncEngine) -> LimitsView:
        async with db.connect() as conn:
            return await read_limits(conn, _tenant_subject(tenant_id))

    @put("/keys/{key_id:str}/limits", summary="Set a key's limits (null = no limit)", responses=ERRORS)
    async def put_key(self, key_id: str, data: LimitsSpec, db: AsyncEngine, keys: KeyCache, actor: str) -> LimitsView:
        return await _put(db, keys, _key_subject(key_id), data, actor)

    @get("/keys/{key_id:str}/limits", summary="A key's limits and its usage today and this month", responses=ERRORS)
    async def get_key(self, key_id: str, db: AsyncEngine) -> LimitsView:
        async with db.connect() as conn:
            return await read_limits(conn, _key_subject(key_id))


async def _put(db: AsyncEngine, keys: KeyCache, subject_id: str, spec: LimitsSpec, actor: str) -> LimitsView:
    async with db.begin() as conn:
        view = await set_limits(conn, subject_id, spec, actor)
    keys.forget()  # this process at once; the others when the notification arrives
    return view


def _tenant_subject(tenant_id: str) -> str:
    if not tenant_id.startswith("ten_"):
        raise NotFound(f"No tenant with id {tenant_id!r}.")
    return tenant_id


def _key_subject(key_id: str) -> str:
    if not key_id.startswith("key_"):
        raise NotFound(f"No key with id {key_id!r}.")
    return key_id
