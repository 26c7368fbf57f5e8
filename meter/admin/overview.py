"""The operator's overview of tenants: each with its month-to-date spend, monthly budget and prepaid
credit, searchable and sortable, for the console's tenants page. Spend comes from the daily rollups
(one index range per tenant), credit from the limits row and the top-ups."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec
from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from meter import periods
from meter.db.models import credit_transactions, limits, tenants, usage_daily

SortBy = Literal["name", "status", "spend", "budget", "credit", "created"]


class TenantSummary(msgspec.Struct):
    id: str
    name: str
    status: str
    created_at: datetime
    month_usd: Decimal  # spent this UTC month so far
    budget_usd_per_month: Decimal | None
    credit_available_usd: Decimal | None  # None: billed afterwards, not prepaid
    credited_usd: Decimal  # every top-up so far (what the credit bar is out of)

    @property
    def budget_used(self) -> float | None:
        """The share of the monthly budget spent, 0..1 (more when over); None without a budget."""
        if self.budget_usd_per_month is None:
            return None
        if not self.budget_usd_per_month:
            return 1.0
        return float(self.month_usd / self.budget_usd_per_month)

    @property
    def credit_left(self) -> float | None:
        """The share of the credit ever added that is still available, 0..1; None if not prepaid."""
        if self.credit_available_usd is None:
            return None
        if self.credited_usd <= 0:
            return 0.0
        return max(0.0, min(1.0, float(self.credit_available_usd / self.credited_usd)))


class TenantOverview(msgspec.Struct):
    data: list[TenantSummary]
    total: int  # tenants matching the search, over all pages


def _query(search: str) -> Select[tuple[object, ...]]:
    month = periods.month_start(periods.today())
    spend = (
        select(usage_daily.c.tenant_id, func.sum(usage_daily.c.cost_usd).label("usd"))
        .where(usage_daily.c.day >= month)
        .group_by(usage_daily.c.tenant_id)
        .subquery()
    )
    credited = (
        select(credit_transactions.c.tenant_id, func.sum(credit_transactions.c.amount_usd).label("usd"))
        .where(credit_transactions.c.amount_usd > 0)
        .group_by(credit_transactions.c.tenant_id)
        .subquery()
    )
    query = (
        select(
            tenants.c.id,
            tenants.c.name,
            tenants.c.status,
            tenants.c.created_at,
            func.coalesce(spend.c.usd, 0).label("month_usd"),
            limits.c.budget_usd_per_month,
            (limits.c.credit_balance_usd - limits.c.credit_held_usd).label("credit_available_usd"),
            func.coalesce(credited.c.usd, 0).label("credited_usd"),
        )
        .select_from(tenants)
        .outerjoin(limits, limits.c.subject_id == tenants.c.id)
        .outerjoin(spend, spend.c.tenant_id == tenants.c.id)
        .outerjoin(credited, credited.c.tenant_id == tenants.c.id)
    )
    if search.strip():
        # A search is text, never a pattern: LIKE's wildcards in it match themselves.
        escaped = search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(or_(tenants.c.name.ilike(f"%{escaped}%", escape="\\"), tenants.c.id == search.strip()))
    return query


async def tenant_overview(
    conn: AsyncConnection, search: str, sort: SortBy, descending: bool, limit: int, offset: int
) -> TenantOverview:
    query = _query(search)
    columns = query.selected_columns
    budget_share = columns.month_usd / func.nullif(columns.budget_usd_per_month, 0)
    order = {
        "name": func.lower(tenants.c.name),
        "status": tenants.c.status,
        "spend": columns.month_usd,
        "budget": budget_share,
        "credit": columns.credit_available_usd,
        "created": tenants.c.created_at,
    }[sort]
    ordered = order.desc().nulls_last() if descending else order.asc().nulls_last()
    rows = (await conn.execute(query.order_by(ordered, tenants.c.id).limit(limit).offset(offset))).mappings().all()
    total = (await conn.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    return TenantOverview(data=[TenantSummary(**row) for row in rows], total=int(total))
