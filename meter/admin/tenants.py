"""Tenants: the companies or teams an operator bills. A suspended tenant's keys get 403."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, patch, post
from litestar.params import Parameter
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter.admin import audit
from meter.admin.pagination import fetch_page
from meter.admin.schema import ERRORS, TEXT_PATTERN
from meter.credentials import new_id
from meter.db import notices
from meter.db.models import api_keys, tenants
from meter.errors import InvalidRequest, NotFound
from meter.proxy.auth import KeyCache

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=TEXT_PATTERN)]


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name


class TenantPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | None = None
    status: Literal["active", "suspended"] | None = None


class Tenant(msgspec.Struct):
    id: str
    name: str
    status: str
    created_at: datetime


class TenantPage(msgspec.Struct):
    data: list[Tenant]
    next_cursor: str | None


def _clean(name: str) -> str:
    if not name.strip():
        raise InvalidRequest("name: must not be blank")
    return name.strip()


async def create_tenant(conn: AsyncConnection, name: str, actor: str) -> Tenant:
    row = (
        (await conn.execute(insert(tenants).values(id=new_id("ten"), name=_clean(name)).returning(*tenants.c)))
        .mappings()
        .one()
    )
    tenant = Tenant(**row)
    await audit.record(conn, actor, "tenant.create", tenant.id, {"name": tenant.name})
    return tenant


async def get_tenant(conn: AsyncConnection, tenant_id: str) -> Tenant:
    row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).mappings().first()
    if row is None:
        raise NotFound(f"No tenant with id {tenant_id!r}.")
    return Tenant(**row)


async def list_tenants(conn: AsyncConnection, after: str | None, limit: int, status: str | None = None) -> TenantPage:
    query = select(tenants)
    if status:
        query = query.where(tenants.c.status == status)
    rows, next_cursor = await fetch_page(conn, query, tenants.c.id, after, limit)
    return TenantPage(data=[Tenant(**row) for row in rows], next_cursor=next_cursor)


async def update_tenant(conn: AsyncConnection, tenant_id: str, change: TenantPatch, actor: str) -> Tenant:
    values: dict[str, str] = {}
    if change.name is not None:
        values["name"] = _clean(change.name)
    if change.status is not None:
        values["status"] = change.status
    if not values:
        return await get_tenant(conn, tenant_id)
    row = (
        (await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(**values).returning(*tenants.c)))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"No tenant with id {tenant_id!r}.")
    action = {"suspended": "tenant.suspend", "active": "tenant.reactivate"}.get(
        values.get("status", ""), "tenant.update"
    )
    await audit.record(conn, actor, action, tenant_id, values)
    if "status" in values:  # every process re-reads this tenant's keys at once
        hashes = (api_keys.c.key_hash, api_keys.c.previous_key_hash)
        rows = (await conn.execute(select(*hashes).where(api_keys.c.tenant_id == tenant_id))).all()
        await notices.keys_withdrawn(conn, [h for row in rows for h in row])
    return Tenant(**row)


class TenantController(Controller):
    path = "/tenants"

    @post("/", summary="Create a tenant", responses=ERRORS)
    async def create(self, data: TenantCreate, db: AsyncEngine, actor: str) -> Tenant:
        async with db.begin() as conn:
            return await create_tenant(conn, data.name, actor)

    @get("/", summary="List tenants, oldest first, with cursor pagination", responses=ERRORS)
    async def list(
        self,
        db: AsyncEngine,
        after: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
        status: Literal["active", "suspended"] | None = None,
    ) -> TenantPage:
        async with db.connect() as conn:
            return await list_tenants(conn, after, limit, status)

    @get("/{tenant_id:str}", summary="Get a tenant", responses=ERRORS)
    async def get(self, tenant_id: str, db: AsyncEngine) -> Tenant:
        async with db.connect() as conn:
            return await get_tenant(conn, tenant_id)

    @patch(
        "/{tenant_id:str}", summary="Rename, suspend (status=suspended) or reactivate (status=active)", responses=ERRORS
    )
    async def patch(self, tenant_id: str, data: TenantPatch, db: AsyncEngine, actor: str, keys: KeyCache) -> Tenant:
        async with db.begin() as conn:
            tenant = await update_tenant(conn, tenant_id, data, actor)
        keys.forget()
        return tenant
