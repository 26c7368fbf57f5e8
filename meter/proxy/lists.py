"""Lists of a tenant's own objects (batches, files), answered by meter from its tables in
Anthropic's list shape and paging: newest first, `limit` (1 to 1000, default 20), `after_id` for
the page right after (older than) an object, `before_id` for the page right before (newer than) it,
and `data`, `has_more`, `first_id`, `last_id`. Never the upstream's list, which is the operator's
whole organisation's."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import msgspec
from sqlalchemy import Table, and_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.errors import InvalidRequest
from meter.proxy.handler import Answer

LEAST, MOST, DEFAULT = 1, 1000, 20


async def tenant_page(conn: AsyncConnection, table: Table, tenant_id: str, query: bytes) -> Answer:
    """The page the list request's query string asks for, of the tenant's live rows of `table`
    (which has `id`, `tenant_id`, `created_at`, `deleted_at` and the upstream's `object`)."""
    limit, after_id, before_id = _paging(query)
    mine = and_(table.c.tenant_id == tenant_id, table.c.deleted_at.is_(None))
    order = tuple_(table.c.created_at, table.c.id)
    rows = select(table.c.object).where(mine)
    if after_id or before_id:
        mark = select(table.c.created_at, table.c.id).where(mine, table.c.id == (after_id or before_id)).subquery()
        anchor = tuple_(select(mark.c.created_at).scalar_subquery(), select(mark.c.id).scalar_subquery())
        rows = rows.where(order < anchor if after_id else order > anchor)
    newest_first = before_id is None
    ordering = (table.c.created_at.desc(), table.c.id.desc()) if newest_first else (table.c.created_at, table.c.id)
    found = list((await conn.execute(rows.order_by(*ordering).limit(limit + 1))).scalars())
    objects: list[dict[str, Any]] = [dict(row) for row in found[:limit]]
    if not newest_first:
        objects.reverse()
    body = {
        "data": objects,
        "has_more": len(found) > limit,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
    }
    return Answer(200, msgspec.json.encode(body))


def _paging(query: bytes) -> tuple[int, str | None, str | None]:
    values = {name: items[-1] for name, items in parse_qs(query.decode("latin-1")).items()}
    raw = values.get("limit", str(DEFAULT))
    if not raw.isdigit() or not LEAST <= int(raw) <= MOST:
        raise InvalidRequest(f"limit: must be an integer from {LEAST} to {MOST}")
    if values.get("after_id") and values.get("before_id"):
        raise InvalidRequest("after_id and before_id: give at most one")
    return int(raw), values.get("after_id"), values.get("before_id")
