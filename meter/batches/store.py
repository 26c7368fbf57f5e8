"""The `batches` table: a tenant's batches, their last-seen upstream object and their reservation."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.db.models import batches


async def record(
    conn: AsyncConnection,
    obj: dict[str, Any],
    tenant_id: str,
    key_id: str,
    request_models: dict[str, str],
    hold: tuple[str, list[str], date, date] | None,
) -> None:
    hold_id, subjects, day, month = hold if hold else (None, None, None, None)
    await conn.execute(
        insert(batches)
        .values(
            id=obj["id"],
            tenant_id=tenant_id,
            key_id=key_id,
            processing_status=str(obj.get("processing_status", "in_progress")),
            object=obj,
            requests=len(request_models),
            request_models=request_models,
            hold_id=hold_id,
            hold_subjects=subjects,
            hold_day=day,
            hold_month=month,
        )
        .on_conflict_do_nothing(index_elements=[batches.c.id])
    )


async def owned(conn: AsyncConnection, tenant_id: str, batch_id: str) -> dict[str, Any] | None:
    """The tenant's batch with this id, or None (also for another tenant's, or a deleted one)."""
    query = select(batches).where(
        batches.c.id == batch_id, batches.c.tenant_id == tenant_id, batches.c.deleted_at.is_(None)
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def seen(conn: AsyncConnection, obj: dict[str, Any]) -> None:
    """Keep the upstream's latest object of a batch (lists are answered from it)."""
    await conn.execute(
        update(batches)
        .where(batches.c.id == obj.get("id"))
        .values(object=obj, processing_status=str(obj.get("processing_status", "in_progress")), checked_at=func.now())
    )


async def deleted(conn: AsyncConnection, batch_id: str) -> None:
    await conn.execute(update(batches).where(batches.c.id == batch_id).values(deleted_at=func.now()))


async def unbilled_count(conn: AsyncConnection) -> int:
    query = select(func.count()).select_from(batches).where(batches.c.billed_at.is_(None))
    return int((await conn.execute(query)).scalar_one())


def is_due(now: datetime) -> Any:
    """Batches a billing worker may take: not billed, and not leased by a live worker."""
    return and_(batches.c.billed_at.is_(None), or_(batches.c.billing_until.is_(None), batches.c.billing_until < now))
