"""A tenant's message batches, as the operator sees them: status, request counts, whether and when
their results were billed (`meter batches list`, `GET /admin/tenants/{id}/batches`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.params import Parameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter.admin.pagination import fetch_page
from meter.admin.schema import ERRORS
from meter.admin.tenants import get_tenant
from meter.db.models import batches


class BatchRecord(msgspec.Struct):
    id: str
    key_id: str
    created_at: datetime
    processing_status: str
    requests: int
    request_counts: dict[str, Any] | None
    billed_at: datetime | None
    billed_rows: int | None
    deleted_at: datetime | None


class BatchPage(msgspec.Struct):
    data: list[BatchRecord]
    next_cursor: str | None


async def tenant_batches(conn: AsyncConnection, tenant_id: str, after: str | None, limit: int) -> BatchPage:
    """The tenant's batches, by id (the admin API's one cursor order)."""
    await get_tenant(conn, tenant_id)
    rows, next_cursor = await fetch_page(
        conn, select(batches).where(batches.c.tenant_id == tenant_id), batches.c.id, after, limit
    )
    data = [
        BatchRecord(
            id=row["id"],
            key_id=row["key_id"],
            created_at=row["created_at"],
            processing_status=row["processing_status"],
            requests=row["requests"],
            request_counts=row["object"].get("request_counts"),
            billed_at=row["billed_at"],
            billed_rows=row["billed_rows"],
            deleted_at=row["deleted_at"],
        )
        for row in rows
    ]
    return BatchPage(data=data, next_cursor=next_cursor)


class BatchController(Controller):
    @get("/tenants/{tenant_id:str}/batches", summary="A tenant's message batches", responses=ERRORS)
    async def list(
        self,
        tenant_id: str,
        db: AsyncEngine,
        after: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> BatchPage:
        async with db.connect() as conn:
            return await tenant_batches(conn, tenant_id, after, limit)
