"""A tenant's keys: issuing one (its secret shown once, on the page that answers the form),
rotating one (the new secret shown once, the old one honoured for a grace period) and revoking one."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.admin.audit import CONSOLE_ACTOR
from meter.admin.keys import KeyCreate, KeyRotate, issue_key, list_keys, revoke_key, rotate_key
from meter.admin.limits import read_limits, set_limits, tenant_of
from meter.admin.tenants import get_tenant
from meter.console import forms
from meter.console.pages.tenant import tenant_page
from meter.console.render import page, redirect
from meter.credentials import KeyHasher
from meter.db.models import LIMIT_SETTINGS
from meter.errors import NotFound
from meter.proxy.auth import KeyCache

GRACE_PERIODS_S = {"0": 0, "3600": 3600, "86400": 86400, "604800": 604800}


async def key_page(
    request: Request[Any, Any, Any],
    db: AsyncEngine,
    key_id: str,
    done: bool = False,
    error: str | None = None,
    entered: dict[str, str] | None = None,
) -> Response[Any]:
    """A key: what it is, its usage today and this month, and its own limits (within the tenant's)."""
    tenant_id = await _tenant_of_key(db, key_id)
    async with db.connect() as conn:
        tenant = await get_tenant(conn, tenant_id)
        key = next(k for k in (await list_keys(conn, tenant_id, None, 1000)).data if k.id == key_id)
        limits = await read_limits(conn, key_id)
    return page(
        request,
        "key.html",
        status=400 if error else 200,
        title=key.name or key.id,
        tenant=tenant,
        key=key,
        limits=limits,
        settings=LIMIT_SETTINGS,
        labels=forms.LABELS,
        notice="Key limits saved. They apply to the next request on every meter process." if done else None,
        error=error,
        typed=entered or {},
    )


class KeysController(Controller):
    path = "/console"

    @get("/keys/{key_id:str}", include_in_schema=False)
    async def show(
        self, request: Request[Any, Any, Any], db: AsyncEngine, key_id: str, done: bool = False
    ) -> Response[Any]:
        return await key_page(request, db, key_id, done=done)

    @post("/keys/{key_id:str}/limits", include_in_schema=False)
    async def save_limits(
        self, request: Request[Any, Any, Any], db: AsyncEngine, keys: KeyCache, key_id: str
    ) -> Response[Any]:
        await _tenant_of_key(db, key_id)
        form = await request.form()
        try:
            spec = forms.limits_spec(form)
            async with db.begin() as conn:
                await set_limits(conn, key_id, spec, CONSOLE_ACTOR)
        except forms.INPUT_ERRORS as exc:
            return await key_page(request, db, key_id, error=forms.message(exc), entered=forms.entered(form))
        keys.forget()
        return redirect(f"/console/keys/{key_id}?done=true")

    @post("/tenants/{tenant_id:str}/keys", include_in_schema=False)
    async def issue(
        self, request: Request[Any, Any, Any], db: AsyncEngine, hasher: KeyHasher, tenant_id: str
    ) -> Response[Any]:
        form = await request.form()
        try:
            spec = forms.convert(
                {
                    "name": forms.optional(form, "name"),
                    "expires_at": forms.moment(form, "expires_at"),
                    "allowed_models": forms.words(form, "allowed_models"),
                },
                KeyCreate,
            )
            async with db.begin() as conn:
                issued = await issue_key(conn, tenant_id, spec, CONSOLE_ACTOR, hasher)
        except forms.INPUT_ERRORS as exc:
            return await tenant_page(
                request, db, tenant_id, error=forms.message(exc), entered=forms.entered(form), status=400
            )
        return await tenant_page(request, db, tenant_id, issued=issued)

    @post("/keys/{key_id:str}/rotate", include_in_schema=False)
    async def rotate(
        self, request: Request[Any, Any, Any], db: AsyncEngine, hasher: KeyHasher, keys: KeyCache, key_id: str
    ) -> Response[Any]:
        tenant_id = await _tenant_of_key(db, key_id)
        form = await request.form()
        try:
            grace = GRACE_PERIODS_S.get(forms.text(form, "grace_period_s"))
            if grace is None:
                raise forms.FormError("grace_period_s: choose one of the offered periods")
            async with db.begin() as conn:
                issued = await rotate_key(conn, key_id, KeyRotate(grace_period_s=grace), CONSOLE_ACTOR, hasher)
        except forms.INPUT_ERRORS as exc:
            return await tenant_page(request, db, tenant_id, error=forms.message(exc), status=400)
        keys.forget()
        return await tenant_page(request, db, tenant_id, issued=issued)

    @post("/keys/{key_id:str}/revoke", include_in_schema=False)
    async def revoke(self, db: AsyncEngine, keys: KeyCache, key_id: str) -> Response[Any]:
        tenant_id = await _tenant_of_key(db, key_id)
        async with db.begin() as conn:
            await revoke_key(conn, key_id, CONSOLE_ACTOR)
        keys.forget()
        return redirect(f"/console/tenants/{tenant_id}?done=revoked")


async def _tenant_of_key(db: AsyncEngine, key_id: str) -> str:
    if not key_id.startswith("key_"):
        raise NotFound(f"No key with id {key_id!r}.")
    async with db.connect() as conn:
        return await tenant_of(conn, key_id)
