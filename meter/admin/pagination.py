"""Cursor pagination, the one way every admin list pages: ids are time-ordered, so the cursor is the
last id of a page and the next page is everything after it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection


async def fetch_page(
    conn: AsyncConnection,
    query: Select[Any],
    cursor: Any,
    after: str | None,
    limit: int,
    newest_first: bool = False,
) -> tuple[Sequence[RowMapping], str | None]:
    """Up to `limit` rows of `query` ordered by the `cursor` column, after `after` (before it, newest
    first); and the cursor of the next page, or None on the last one."""
    query = query.order_by(cursor.desc() if newest_first else cursor).limit(limit + 1)
    if after:
        query = query.where(cursor < after if newest_first else cursor > after)
    rows = (await conn.execute(query)).mappings().all()
    return rows[:limit], (str(rows[limit - 1][cursor.name]) if len(rows) > limit else None)
