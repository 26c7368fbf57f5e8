"""The tenants page: every tenant with its status, month-to-date spend, budget and credit, searchable
and sortable; and the form that creates one."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.admin.audit import CONSOLE_ACTOR
from meter.admin.overview import SortBy, tenant_overview
from meter.admin.tenants import TenantCreate, create_tenant
from meter.console import forms
from meter.console.render import page, redirect

PAGE_SIZE = 50
COLUMNS: list[tuple[SortBy, str]] = [
    ("name", "Tenant"),
    ("status", "Status"),
    ("spend", "Spent this month"),
    ("budget", "Monthly budget"),
    ("credit", "Prepaid credit"),
    ("created", "Created"),
]


class TenantsController(Controller):
    path = "/console/tenants"

    @get("", include_in_schema=False)
    async def list(
        self,
        request: Request[Any, Any, Any],
        db: AsyncEngine,
        q: Annotated[str, Parameter(max_length=200)] = "",
        sort: SortBy = "name",
        order: Literal["asc", "desc"] = "asc",
        page_number: Annotated[int, Parameter(query="page", ge=1, le=100_000)] = 1,
    ) -> Response[Any]:
        return await _render(request, db, q, sort, order, page_number)

    @post("", include_in_schema=False)
    async def create(self, request: Request[Any, Any, Any], db: AsyncEngine) -> Response[Any]:
        form = await request.form()
        try:
            spec = forms.convert({"name": forms.text(form, "name")}, TenantCreate)
            async with db.begin() as conn:
                tenant = await create_tenant(conn, spec.name, CONSOLE_ACTOR)
        except forms.INPUT_ERRORS as exc:
            return await _render(request, db, "", "name", "asc", 1, error=forms.message(exc), status=400)
        return redirect(f"/console/tenants/{tenant.id}?done=created")


async def _render(
    request: Request[Any, Any, Any],
    db: AsyncEngine,
    q: str,
    sort: SortBy,
    order: str,
    page_number: int,
    error: str | None = None,
    status: int = 200,
) -> Response[Any]:
    async with db.connect() as conn:
        overview = await tenant_overview(conn, q, sort, order == "desc", PAGE_SIZE, (page_number - 1) * PAGE_SIZE)
    pages = max(1, -(-overview.total // PAGE_SIZE))
    return page(
        request,
        "tenants.html",
        status=status,
        title="Tenants",
        overview=overview,
        columns=COLUMNS,
        q=q,
        sort=sort,
        order=order,
        page_number=page_number,
        pages=pages,
        error=error,
    )
