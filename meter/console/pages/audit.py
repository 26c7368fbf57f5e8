"""The audit log, newest first: every change through the admin API, the CLI and this console."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.admin.audit import list_audit
from meter.console.render import page

PAGE_SIZE = 50


class AuditController(Controller):
    path = "/console/audit"

    @get("", include_in_schema=False)
    async def show(
        self,
        request: Request[Any, Any, Any],
        db: AsyncEngine,
        subject: Annotated[str | None, Parameter(query="subject", max_length=100)] = None,
        before: Annotated[str | None, Parameter(query="before", max_length=100)] = None,
    ) -> Response[Any]:
        async with db.connect() as conn:
            entries = await list_audit(conn, subject or None, before or None, PAGE_SIZE, newest_first=True)
        return page(request, "audit.html", title="Audit log", entries=entries, subject=subject or "")
