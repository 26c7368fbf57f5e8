"""Monthly statements: one line per model and price, with the four token kinds, their unit prices
and exact costs; the total is the sum of the month's ledger rows to the last digit. UTC months."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec
from litestar import Controller, MediaType, Response, get
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money, periods
from meter.admin.schema import ERRORS
from meter.admin.tenants import get_tenant
from meter.pricing import Price


class StatementLine(msgspec.Struct):
    """Tokens of one model at one price and one way of running: cost = tokens x unit prices x multiplier."""

    model: str | None
    price_effective_from: datetime | None  # null: the model had no price
    # How the calls ran, and the product of the price's multipliers for it (geo x tier x speed).
    service_tier: str | None
    inference_geo: str | None
    speed: str | None
    long_context: bool  # the long-context unit prices applied
    multiplier: str | None
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


class FeeLine(msgspec.Struct):
    """Units of one server tool's fee for one model: cost = units x unit price."""

    model: str | None
    fee: str  # the usage counter, e.g. web_search_requests
    units: int
    unit_usd: str
    cost_usd: str


class Statement(msgspec.Struct):
    tenant_id: str
    tenant_name: str
    month: str
    currency: str
    lines: list[StatementLine]
    fees: list[FeeLine]
    total_usd: str


# Each ledger row joined to the price in effect when it started; lines group rows by model, price
# and how they ran. Costs are the rows' own exact costs, summed: a statement never re-prices. A
# line's cost is its tokens' part (the rows' costs less their itemised fees).
_LINES = text(
    """
SELECT e.model, p.effective_from, e.service_tier, e.inference_geo, e.speed, e.long_context, count(*) AS requests,
       sum(e.input_tokens) AS input_tokens, sum(e.cache_creation_5m_input_tokens) AS cache_write_5m_tokens,
       sum(e.cache_creation_1h_input_tokens) AS cache_write_1h_tokens,
       sum(e.cache_read_input_tokens) AS cache_read_tokens, sum(e.output_tokens) AS output_tokens,
       sum(e.cost_usd - COALESCE((SELECT sum((f.value->>'usd')::numeric) FROM jsonb_each(e.fees) f), 0)) AS cost_usd,
       count(*) FILTER (WHERE e.cost_usd IS NULL) AS unpriced,
       (array_agg(to_jsonb(p)))[1] AS price
FROM usage_events e
LEFT JOIN LATERAL (
    SELECT * FROM prices WHERE prices.model = e.model AND prices.effective_from <= e.started_at
    ORDER BY prices.effective_from DESC LIMIT 1
) p ON true
WHERE e.tenant_id = :tenant AND e.started_at >= :start AND e.started_at < :end
GROUP BY e.model, p.effective_from, e.service_tier, e.inference_geo, e.speed, e.long_context
ORDER BY e.model NULLS LAST, p.effective_from NULLS FIRST, e.long_context, e.service_tier, e.inference_geo, e.speed
"""
)
_FEES = text(
    """
SELECT e.model, f.key AS fee, sum((f.value->>'units')::bigint) AS units, sum((f.value->>'usd')::numeric) AS usd
FROM usage_events e, jsonb_each(e.fees) f
WHERE e.tenant_id = :tenant AND e.started_at >= :start AND e.started_at < :end
GROUP BY e.model, f.key ORDER BY e.model, f.key
"""
)


def _line(row: Any) -> StatementLine:
    price = Price.from_row({**row["price"], "effective_from": row["effective_from"]}) if row["price"] else None
    prices = how = None
    if price is not None:
        prices = price.long_context.prices if row["long_context"] and price.long_context else price.tokens
        how = price.multiplier({name: row[name] for name in ("service_tier", "inference_geo", "speed")})

    def unit(name: str) -> str | None:
        return None if prices is None else money.decimal_text(getattr(prices, name))

    return StatementLine(
        model=row["model"],
        price_effective_from=row["effective_from"],
        service_tier=row["service_tier"],
        inference_geo=row["inference_geo"],
        speed=row["speed"],
        long_context=row["long_context"],
        multiplier=money.decimal_or_none(how),
        requests=int(row["requests"]),
        input_tokens=int(row["input_tokens"]),
        input_per_mtok=unit("input_per_mtok"),
        cache_write_5m_tokens=int(row["cache_write_5m_tokens"]),
        cache_write_5m_per_mtok=unit("cache_write_5m_per_mtok"),
        cache_write_1h_tokens=int(row["cache_write_1h_tokens"]),
        cache_write_1h_per_mtok=unit("cache_write_1h_per_mtok"),
        cache_read_tokens=int(row["cache_read_tokens"]),
        cache_read_per_mtok=unit("cache_read_per_mtok"),
        output_tokens=int(row["output_tokens"]),
        output_per_mtok=unit("output_per_mtok"),
        cost_usd=money.usd_or_none(row["cost_usd"]),
        unpriced_requests=int(row["unpriced"]),
    )


async def statement(conn: AsyncConnection, tenant_id: str, month: str) -> Statement:
    tenant = await get_tenant(conn, tenant_id)
    start, end = periods.month_bounds(month)
    period = {"tenant": tenant_id, "start": start, "end": end}
    rows = (await conn.execute(_LINES, period)).mappings().all()
    fee_rows = (await conn.execute(_FEES, period)).mappings().all()
    fees = [
        FeeLine(
            model=row["model"],
            fee=row["fee"],
            units=int(row["units"]),
            unit_usd=money.decimal_text(row["usd"] / row["units"]) if row["units"] else "0",
            cost_usd=money.usd(row["usd"]),
        )
        for row in fee_rows
    ]
    total = sum((row["cost_usd"] for row in rows if row["cost_usd"] is not None), Decimal(0))
    total += sum((row["usd"] for row in fee_rows), Decimal(0))
    return Statement(tenant.id, tenant.name, month, "USD", [_line(row) for row in rows], fees, money.usd(total))


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A value as a CSV cell that a spreadsheet shows as text, never runs: a leading quote defuses it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def statement_csv(report: Statement) -> str:
    """One table: the token lines, then the fee lines (their `item` names the fee), then the total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    fields = ["item", *StatementLine.__struct_fields__, "units", "unit_usd"]
    writer.writerow(fields)
    rows = [{"item": "tokens", **msgspec.to_builtins(line)} for line in report.lines]
    rows += [{"item": fee.fee, **msgspec.to_builtins(fee)} for fee in report.fees]
    for values in rows:
        writer.writerow([csv_cell(values.get(name)) for name in fields])
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
