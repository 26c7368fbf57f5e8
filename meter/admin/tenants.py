"""Tenants: the companies or teams an operator bills."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, post
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter.credentials import new_id
from meter.db.models import tenants
from meter.errors import InvalidRequest


class TenantCreate(msgspec.Struct):
    name: str


class Tenant(msgspec.Struct):
    id: str
    name: str
    status: str
    created_at: datetime


async def create_tenant(conn: AsyncConnection, name: str) -> Tenant:
    name = name.strip()
    if not name:
        raise InvalidRequest("name: must not be empty")
    row = (
        (await conn.execute(insert(tenants).values(id=new_id("ten"), name=name).returning(*tenants.c))).mappings().one()
    )
    return Tenant(**row)


class TenantController(Controller):
    path = "/tenants"

    @post("/", summary="Create a tenant")
    async def create(self, data: TenantCreate, db: AsyncEngine) -> Tenant:
        async with db.begin() as conn:
            return await create_tenant(conn, data.name)
