"""Monthly statements: one line per model and price, with the four token kinds, their unit prices
and exact costs; the total is the sum of the month's ledger rows to the last digit. UTC months."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec
from litestar import Controller, MediaType, Response, get
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money, periods
from meter.admin.schema import ERRORS
from meter.admin.tenants import get_tenant


class StatementLine(msgspec.Struct):
    model: str | None
    price_effective_from: datetime | None  # null: the model had no price
    requests: int
    input_tokens: int
    input_per_mtok: str | None
    cache_write_5m_tokens: int
    cache_write_5m_per_mtok: str | None
    cache_write_1h_tokens: int
    cache_write_1h_per_mtok: str | None
    cache_read_tokens: int
    cache_read_per_mtok: str | None
    output_tokens: int
    output_per_mtok: str | None
    cost_usd: str | None  # null when no request of the line could be priced
    unpriced_requests: int


class Statement(msgspec.Struct):
    tenant_id: str
    tenant_name: str
    month: str
    currency: str
    lines: list[StatementLine]
    total_usd: str


# Each ledger row joined to the price in effect when it started; lines group rows by model and
# price. Costs are the rows' own exact costs, summed: a statement never re-prices.
_LINES = text(
    """
SELECT e.model, p.effective_from, count(*) AS requests,
       sum(e.input_tokens) AS input_tokens, sum(e.cache_creation_5m_input_tokens) AS cache_write_5m_tokens,
       sum(e.cache_creation_1h_input_tokens) AS cache_write_1h_tokens,
       sum(e.cache_read_input_tokens) AS cache_read_tokens, sum(e.output_tokens) AS output_tokens,
       p.input_per_mtok, p.cache_write_5m_per_mtok, p.cache_write_1h_per_mtok, p.cache_read_per_mtok,
       p.output_per_mtok, sum(e.cost_usd) AS cost_usd, count(*) FILTER (WHERE e.cost_usd IS NULL) AS unpriced
FROM usage_events e
LEFT JOIN LATERAL (
    SELECT * FROM prices WHERE prices.model = e.model AND prices.effective_from <= e.started_at
    ORDER BY prices.effective_from DESC LIMIT 1
) p ON true
WHERE e.tenant_id = :tenant AND e.started_at >= :start AND e.started_at < :end
GROUP BY e.model, p.effective_from, p.input_per_mtok, p.cache_write_5m_per_mtok, p.cache_write_1h_per_mtok,
         p.cache_read_per_mtok, p.output_per_mtok
ORDER BY e.model NULLS LAST, p.effective_from NULLS FIRST
"""
)


async def statement(conn: AsyncConnection, tenant_id: str, month: str) -> Statement:
    tenant = await get_tenant(conn, tenant_id)
    start, end = periods.month_bounds(month)
    rows = (await conn.execute(_LINES, {"tenant": tenant_id, "start": start, "end": end})).mappings().all()
    lines = [
        StatementLine(
            model=row["model"],
            price_effective_from=row["effective_from"],
            requests=int(row["requests"]),
            input_tokens=int(row["input_tokens"]),
            input_per_mtok=money.decimal_or_none(row["input_per_mtok"]),
            cache_write_5m_tokens=int(row["cache_write_5m_tokens"]),
            cache_write_5m_per_mtok=money.decimal_or_none(row["cache_write_5m_per_mtok"]),
            cache_write_1h_tokens=int(row["cache_write_1h_tokens"]),
            cache_write_1h_per_mtok=money.decimal_or_none(row["cache_write_1h_per_mtok"]),
            cache_read_tokens=int(row["cache_read_tokens"]),
            cache_read_per_mtok=money.decimal_or_none(row["cache_read_per_mtok"]),
            output_tokens=int(row["output_tokens"]),
            output_per_mtok=money.decimal_or_none(row["output_per_mtok"]),
            cost_usd=money.usd_or_none(row["cost_usd"]),
            unpriced_requests=int(row["unpriced"]),
        )
        for row in rows
    ]
    total = sum((row["cost_usd"] for row in rows if row["cost_usd"] is not None), Decimal(0))
    return Statement(tenant.id, tenant.name, month, "USD", lines, money.usd(total))


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A value as a CSV cell that a spreadsheet shows as text, never runs: a leading quote defuses it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def statement_csv(report: Statement) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    fields = list(StatementLine.__struct_fields__)
    writer.writerow(fields)
    for line in report.lines:
        values = msgspec.to_builtins(line)
        writer.writerow([csv_cell(values[name]) for name in fields])
    total = {"model": "TOTAL", "cost_usd": report.total_usd}
    writer.writerow([total.get(name, "") for name in fields])
    return out.getvalue()


class StatementController(Controller):
    @get("/tenants/{tenant_id:str}/statement", summary="A tenant's monthly statement, JSON or CSV", responses=ERRORS)
    async def get(
        self, tenant_id: str, month: str, db: AsyncEngine, format: Literal["json", "csv"] = "json"
    ) -> Response[bytes]:
        async with db.connect() as conn:
            report = await statement(conn, tenant_id, month)
        if format == "csv":
            return Response(
                statement_csv(report).encode(),
                media_type="text/csv",
                headers={"content-disposition": f'attachment; filename="{tenant_id}-{month}.csv"'},
            )
        return Response(msgspec.json.encode(report), media_type=MediaType.JSON)
