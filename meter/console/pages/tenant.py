"""One tenant: its keys, limits, usage today and this month, and prepaid credit; suspending and
reactivating it, setting its limits and topping up its credit. Key actions are in keys.py."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from sqlalchemy.ext.asyncio import AsyncEngine

from meter import periods
from meter.admin.audit import CONSOLE_ACTOR
from meter.admin.credit import TopUp, add_credit, read_balance
from meter.admin.keys import IssuedKey, list_keys
from meter.admin.limits import read_limits, set_limits
from meter.admin.tenants import TenantPatch, get_tenant, update_tenant
from meter.console import forms
from meter.console.render import page, redirect
from meter.db.models import LIMIT_SETTINGS
from meter.proxy.auth import KeyCache

NOTICES = {
    "created": "Tenant created. Issue it a key below.",
    "suspended": "Tenant suspended: its keys are refused (403) on every meter process.",
    "active": "Tenant reactivated: its keys work again.",
    "limits": "Limits saved. They apply to the next request on every meter process.",
    "credit": "Credit added.",
    "revoked": "Key revoked on every meter process.",
    "renamed": "Tenant renamed.",
}
STATUS_ACTIONS = {"suspended", "active"}


async def tenant_page(
    request: Request[Any, Any, Any],
    db: AsyncEngine,
    tenant_id: str,
    done: str | None = None,
    error: str | None = None,
    issued: IssuedKey | None = None,
    entered: dict[str, str] | None = None,
    status: int = 200,
) -> Response[Any]:
    """The tenant's page; after a failed change, with the reason; after an issue or rotation, with
    the new secret, which is shown this once and never stored."""
    async with db.connect() as conn:
        tenant = await get_tenant(conn, tenant_id)
        keys = await list_keys(conn, tenant_id, None, 1000)
        limits = await read_limits(conn, tenant_id)
        balance = await read_balance(conn, tenant_id)
    return page(
        request,
        "tenant.html",
        status=status,
        title=tenant.name,
        tenant=tenant,
        keys=keys.data,
        limits=limits,
        balance=balance,
        settings=LIMIT_SETTINGS,
        labels=forms.LABELS,
        notice=NOTICES.get(done or ""),
        error=error,
        issued=issued,
        typed=lambda form: entered if entered and entered.get("form") == form else {},
        month=periods.today().strftime("%Y-%m"),
    )


class TenantController(Controller):
    path = "/console/tenants/{tenant_id:str}"

    @get("", include_in_schema=False)
    async def show(
        self, request: Request[Any, Any, Any], db: AsyncEngine, tenant_id: str, done: str | None = None
    ) -> Response[Any]:
        return await tenant_page(request, db, tenant_id, done=done)

    @post("/status", include_in_schema=False)
    async def set_status(
        self, request: Request[Any, Any, Any], db: AsyncEngine, keys: KeyCache, tenant_id: str
    ) -> Response[Any]:
        form = await request.form()
        try:
            change = forms.convert({"status": forms.text(form, "status")}, TenantPatch)
            async with db.begin() as conn:
                await get_tenant(conn, tenant_id)
                await update_tenant(conn, tenant_id, change, CONSOLE_ACTOR)
        except forms.INPUT_ERRORS as exc:
            return await tenant_page(
                request, db, tenant_id, error=forms.message(exc), entered=forms.entered(form), status=400
            )
        keys.forget()
        return redirect(f"/console/tenants/{tenant_id}?done={change.status}")

    @post("/name", include_in_schema=False)
    async def rename(self, request: Request[Any, Any, Any], db: AsyncEngine, tenant_id: str) -> Response[Any]:
        form = await request.form()
        try:
            change = forms.convert({"name": forms.text(form, "name")}, TenantPatch)
            async with db.begin() as conn:
                await get_tenant(conn, tenant_id)
                await update_tenant(conn, tenant_id, change, CONSOLE_ACTOR)
        except forms.INPUT_ERRORS as exc:
            return await tenant_page(
                request, db, tenant_id, error=forms.message(exc), entered=forms.entered(form), status=400
            )
        return redirect(f"/console/tenants/{tenant_id}?done=renamed")

    @post("/limits", include_in_schema=False)
    async def save_limits(
        self, request: Request[Any, Any, Any], db: AsyncEngine, keys: KeyCache, tenant_id: str
    ) -> Response[Any]:
        form = await request.form()
        try:
            spec = forms.limits_spec(form)
            async with db.begin() as conn:
                await get_tenant(conn, tenant_id)
                await set_limits(conn, tenant_id, spec, CONSOLE_ACTOR)
        except forms.INPUT_ERRORS as exc:
            return await tenant_page(
                request, db, tenant_id, error=forms.message(exc), entered=forms.entered(form), status=400
            )
        keys.forget()
        return redirect(f"/console/tenants/{tenant_id}?done=limits")

    @post("/credits", include_in_schema=False)
    async def top_up(
        self, request: Request[Any, Any, Any], db: AsyncEngine, keys: KeyCache, tenant_id: str
    ) -> Response[Any]:
        form = await request.form()
        try:
            amount = forms.optional(form, "amount_usd")
            if amount is None:
                raise forms.FormError("amount_usd: give an amount, e.g. 100 or 25.50")
            top_up = forms.convert({"amount_usd": amount, "note": forms.optional(form, "note")}, TopUp)
            async with db.begin() as conn:
                await get_tenant(conn, tenant_id)
                await add_credit(conn, tenant_id, top_up, CONSOLE_ACTOR)
        except forms.INPUT_ERRORS as exc:
            return await tenant_page(
                request, db, tenant_id, error=forms.message(exc), entered=forms.entered(form), status=400
            )
        keys.forget()
        return redirect(f"/console/tenants/{tenant_id}?done=credit")
