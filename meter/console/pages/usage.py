"""Usage for a chosen range, of one tenant or all: a chart by day and model, the table behind it,
and the same table as CSV. Read from the daily rollups (UTC days, `to` inclusive on the page)."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncEngine

from meter import periods
from meter.admin.statements import csv_cell
from meter.admin.tenants import list_tenants
from meter.admin.usage import DayModelUsage, usage_by_day_and_model
from meter.console.charts import Measure, stacked_by_day
from meter.console.render import SECURITY_HEADERS, page
from meter.errors import InvalidRequest

MAX_DAYS = 366
DEFAULT_DAYS = 30
Tenant = Annotated[str | None, Parameter(query="tenant", max_length=100)]
From = Annotated[date | None, Parameter(query="from")]
To = Annotated[date | None, Parameter(query="to", description="inclusive")]


def period(start: date | None, last: date | None) -> tuple[date, date]:
    """The days asked for as [start, end): by default the last 30 days up to today."""
    last = last or periods.today()
    if last >= date.max or last < date.min + timedelta(days=DEFAULT_DAYS):
        raise InvalidRequest("to: must be a day between 0001-01-31 and 9999-12-30")
    start = start or last - timedelta(days=DEFAULT_DAYS - 1)
    if last < start:
        raise InvalidRequest("to: must not be before from")
    if (last - start).days >= MAX_DAYS:
        raise InvalidRequest(f"from: a range is at most {MAX_DAYS} days")
    return start, last + timedelta(days=1)


async def _usage(
    db: AsyncEngine, tenant: str | None, start: date | None, last: date | None
) -> tuple[date, date, list[DayModelUsage]]:
    begin, end = period(start, last)
    async with db.connect() as conn:
        return await usage_by_day_and_model(conn, tenant or None, begin, end)


class UsageController(Controller):
    path = "/console"

    @get("/usage", include_in_schema=False)
    async def show(
        self,
        request: Request[Any, Any, Any],
        db: AsyncEngine,
        tenant: Tenant = None,
        start: From = None,
        last: To = None,
        measure: Measure = "cost",
    ) -> Response[Any]:
        error = None
        try:
            begin, end, rows = await _usage(db, tenant, start, last)
        except InvalidRequest as exc:
            error = exc.message
            begin, end, rows = *period(None, None), []
        async with db.connect() as conn:
            tenants = (await list_tenants(conn, None, 1000)).data
        by_model: dict[str, dict[str, Decimal]] = {}
        for row in rows:
            sums = by_model.setdefault(row.model, {"requests": Decimal(0), "cost": Decimal(0), "tokens": Decimal(0)})
            sums["requests"] += row.requests
            sums["cost"] += Decimal(row.cost_usd)
            sums["tokens"] += row.input_tokens + row.output_tokens + row.cache_creation_input_tokens
            sums["tokens"] += row.cache_read_input_tokens
        return page(
            request,
            "usage.html",
            status=400 if error else 200,
            title="Usage",
            error=error,
            tenants=tenants,
            tenant=tenant or "",
            start=begin,
            last=end - timedelta(days=1),
            measure=measure,
            chart=stacked_by_day(rows, begin, end, measure),
            rows=rows,
            by_model=sorted(by_model.items(), key=lambda item: -item[1]["cost"]),
            total=sum((Decimal(row.cost_usd) for row in rows), Decimal(0)),
            query=request.url.query,
        )

    @get("/usage.csv", include_in_schema=False)
    async def download(
        self, db: AsyncEngine, tenant: Tenant = None, start: From = None, last: To = None
    ) -> Response[bytes]:
        begin, end, rows = await _usage(db, tenant, start, last)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        fields = list(DayModelUsage.__struct_fields__)
        writer.writerow(fields)
        for row in rows:
            writer.writerow([csv_cell(getattr(row, name)) for name in fields])
        name = f"usage-{tenant or 'all'}-{begin}-{end - timedelta(days=1)}.csv"
        return Response(
            out.getvalue().encode(),
            media_type="text/csv",
            headers={**SECURITY_HEADERS, "content-disposition": f'attachment; filename="{name}"'},
        )
