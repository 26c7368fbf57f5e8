"""A tenant's monthly statement as the admin API computes it: a line per model and price, the
server-tool fees, the total; and the same statement as CSV."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncEngine

from meter import periods
from meter.admin.statements import statement, statement_csv
from meter.console.render import SECURITY_HEADERS, page
from meter.errors import InvalidRequest

Month = Annotated[str | None, Parameter(query="month", max_length=7)]


class StatementController(Controller):
    path = "/console/tenants/{tenant_id:str}"

    @get("/statement", include_in_schema=False)
    async def show(
        self, request: Request[Any, Any, Any], db: AsyncEngine, tenant_id: str, month: Month = None
    ) -> Response[Any]:
        chosen = month or periods.today().strftime("%Y-%m")
        error = None
        async with db.connect() as conn:
            try:
                report = await statement(conn, tenant_id, chosen)
            except InvalidRequest as exc:
                error, chosen = exc.message, periods.today().strftime("%Y-%m")
                report = await statement(conn, tenant_id, chosen)
        return page(
            request,
            "statement.html",
            status=400 if error else 200,
            title=f"Statement {chosen}",
            report=report,
            month=chosen,
            error=error,
        )

    @get("/statement.csv", include_in_schema=False)
    async def download(self, db: AsyncEngine, tenant_id: str, month: Month = None) -> Response[bytes]:
        chosen = month or periods.today().strftime("%Y-%m")
        async with db.connect() as conn:
            report = await statement(conn, tenant_id, chosen)
        disposition = f'attachment; filename="{report.tenant_id}-{chosen}.csv"'
        return Response(
            statement_csv(report).encode(),
            media_type="text/csv",
            headers={**SECURITY_HEADERS, "content-disposition": disposition},
        )
