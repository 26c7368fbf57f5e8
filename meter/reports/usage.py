"""`GET /v1/organizations/usage_report/messages` for one tenant, from the ledger: time buckets of
token counters and web searches, cut by any subset of `group_by[]` (a dimension not grouped by is
null in every result), filtered by `api_key_ids[]`, `models[]`, `service_tiers[]`,
`context_window[]`, `inference_geos[]`, `speeds[]` (`workspace_ids[]` matches nothing: meter's
tenants have no workspaces). `api_key_id` is meter's key id; the model is the one the upstream
answered with, as Anthropic's own report names it.

Counted: the calls that reach the Messages API (`/v1/messages`, `/v1/chat/completions`, and
message batch results, dated by the batch's creation as Anthropic does), by when they started."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, and_, case, cast, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.db.models import usage_events
from meter.reports.page import Page, Query, read_page

e = usage_events.c
# The endpoints whose calls the upstream's reports count (as meter/reconcile/ledger.py).
BILLED_ENDPOINTS = ("messages", "chat.completions", "batches")
DIMENSIONS: dict[str, Any] = {
    "api_key_id": e.key_id,
    "workspace_id": None,  # no workspaces: always null, and matched by no workspace_ids[]
    "model": func.coalesce(e.response_model, e.model),
    "service_tier": func.coalesce(e.service_tier, "standard"),
    "context_window": case((e.long_context, "200k-1M"), else_="0-200k"),
    "inference_geo": func.coalesce(e.inference_geo, "not_available"),
    "speed": func.coalesce(e.speed, "standard"),
}
FILTERS = {
    "api_key_ids": "api_key_id",
    "workspace_ids": "workspace_id",
    "models": "model",
    "service_tiers": "service_tier",
    "context_window": "context_window",
    "inference_geos": "inference_geo",
    "speeds": "speed",
}
WEB_SEARCHES = func.coalesce(cast(e.server_tool_use["web_search_requests"].astext, BigInteger), 0)
COUNTERS = {
    "uncached_input_tokens": e.input_tokens,
    "ephemeral_5m_input_tokens": e.cache_creation_5m_input_tokens,
    "ephemeral_1h_input_tokens": e.cache_creation_1h_input_tokens,
    "cache_read_input_tokens": e.cache_read_input_tokens,
    "output_tokens": e.output_tokens,
    "web_search_requests": WEB_SEARCHES,
}


def bucket_of(width: int) -> Any:
    """The Unix time of the start of the bucket a row falls in."""
    return cast(func.floor(func.extract("epoch", e.started_at) / width) * width, BigInteger)


def tenant_rows(tenant_id: str, page: Page) -> Any:
    """The tenant's billed calls in the page's buckets (the tenant index's range)."""
    return and_(
        e.tenant_id == tenant_id,
        e.started_at >= page.start,
        e.started_at < page.end,
        e.endpoint.in_(BILLED_ENDPOINTS),
    )


async def usage_report(conn: AsyncConnection, tenant_id: str, query: Query) -> dict[str, Any]:
    page = read_page(query, ("1m", "1h", "1d"))
    groups = query.array("group_by", tuple(DIMENSIONS))
    grouped = [name for name in DIMENSIONS if name in groups and DIMENSIONS[name] is not None]
    bucket = bucket_of(page.width).label("bucket")
    used = or_(*(column > 0 for column in COUNTERS.values()))
    statement = (
        select(
            bucket,
            *(DIMENSIONS[name].label(name) for name in grouped),
            *(func.sum(column).label(name) for name, column in COUNTERS.items()),
        )
        .where(tenant_rows(tenant_id, page), used)
        .group_by(bucket, *(DIMENSIONS[name] for name in grouped))
    )
    for parameter, dimension in FILTERS.items():
        wanted = query.array(parameter)
        if wanted:
            column = DIMENSIONS[dimension]
            statement = statement.where(false() if column is None else column.in_(wanted))
    results: dict[int, list[dict[str, Any]]] = {}
    for row in (await conn.execute(statement)).mappings():
        results.setdefault(row["bucket"], []).append(_result(row, grouped))
    for items in results.values():
        items.sort(key=lambda item: tuple(str(item[name] or "") for name in DIMENSIONS))
    return page.envelope(results)


def _result(row: Any, grouped: list[str]) -> dict[str, Any]:
    return {
        "uncached_input_tokens": int(row["uncached_input_tokens"]),
        "cache_creation": {
            "ephemeral_5m_input_tokens": int(row["ephemeral_5m_input_tokens"]),
            "ephemeral_1h_input_tokens": int(row["ephemeral_1h_input_tokens"]),
        },
        "cache_read_input_tokens": int(row["cache_read_input_tokens"]),
        "output_tokens": int(row["output_tokens"]),
        "server_tool_use": {"web_search_requests": int(row["web_search_requests"])},
        **{name: (row[name] if name in grouped else None) for name in DIMENSIONS},
    }
