"""The ledger's side: `usage_events` bucketed as the upstream's reports are, by the UTC day a call
started and the model the upstream answered with.

Only calls that reached the Messages API count (`messages`, `chat.completions`, and `batches`: the
results of message batches, dated by the batch's creation as the upstream reports them): the
other endpoints bill nothing upstream. Token costs are a row's cost minus its fees, which go to their own buckets
(report.py); priority-tier rows' costs are kept apart, since the upstream's cost report has none.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.periods import midnight
from meter.reconcile.report import KINDS, BucketKey, LedgerSide, fee_line

ENDPOINTS = ("messages", "chat.completions", "batches")
# Request ids are `req_` + 12 hex digits of the millisecond the request arrived (credentials.new_id):
# a range of ids is a range of the primary key's index, where a range of started_at would scan the
# table. The margin covers the time between the id and started_at (authentication, at most seconds).
ID_MARGIN = timedelta(hours=1)

# A row's fees are `{"web_search_requests": {"units": 3, "usd": "0.03"}}`, or NULL without fees.
_FEES = "CASE WHEN jsonb_typeof(e.fees) = 'object' THEN e.fees ELSE '{}'::jsonb END"
_WHERE = """
    e.request_id >= :first_id AND e.request_id < :last_id
    AND e.started_at >= :start AND e.started_at < :end
    AND e.endpoint = ANY(:endpoints)
"""
_BUCKETS = text(
    f"""
    SELECT (e.started_at AT TIME ZONE 'UTC')::date AS day,
           COALESCE(e.response_model, e.model, '') AS model,
           count(*) AS requests,
           count(*) FILTER (WHERE e.cost_usd IS NULL) AS unpriced_requests,
           count(*) FILTER (WHERE e.cost_usd IS NOT NULL) AS priced_requests,
           count(*) FILTER (WHERE e.partial) AS partial_requests,
           sum(e.input_tokens) AS uncached_input_tokens,
           sum(e.cache_creation_5m_input_tokens) AS cache_creation_5m_input_tokens,
           sum(e.cache_creation_1h_input_tokens) AS cache_creation_1h_input_tokens,
           sum(e.cache_read_input_tokens) AS cache_read_input_tokens,
           sum(e.output_tokens) AS output_tokens,
           sum(COALESCE((e.server_tool_use ->> 'web_search_requests')::bigint, 0)) AS web_search_requests,
           sum(e.cost_usd - fees.usd) FILTER (WHERE e.service_tier IS DISTINCT FROM 'priority') AS usd,
           sum(e.cost_usd) FILTER (WHERE e.service_tier = 'priority') AS priority_usd
    FROM usage_events e
    CROSS JOIN LATERAL (
        SELECT COALESCE(sum((f.value ->> 'usd')::numeric), 0) AS usd FROM jsonb_each({_FEES}) f
    ) fees
    WHERE {_WHERE}
    GROUP BY 1, 2
    """
)
_FEE_BUCKETS = text(
    f"""
    SELECT (e.started_at AT TIME ZONE 'UTC')::date AS day, f.key AS fee, sum((f.value ->> 'usd')::numeric) AS usd
    FROM usage_events e CROSS JOIN LATERAL jsonb_each({_FEES}) f
    WHERE {_WHERE} AND e.service_tier IS DISTINCT FROM 'priority'
    GROUP BY 1, 2
    """
)


def _id_at(moment_ms: int) -> str:
    return f"req_{moment_ms:012x}"


async def read_ledger(conn: AsyncConnection, start: date, end: date) -> dict[BucketKey, LedgerSide]:
    """The ledger's usage and cost of each (day, model) of [start, end)."""
    first, last = midnight(start), midnight(end)
    params = {
        "start": first,
        "end": last,
        "first_id": _id_at(int((first - ID_MARGIN).timestamp() * 1000)),
        "last_id": _id_at(int((last + ID_MARGIN).timestamp() * 1000)),
        "endpoints": list(ENDPOINTS),
    }
    sides: dict[BucketKey, LedgerSide] = {}
    for row in (await conn.execute(_BUCKETS, params)).mappings():
        sides[(row["day"], row["model"])] = LedgerSide(
            counts={kind: int(row[kind]) for kind in KINDS},
            usd=row["usd"] or Decimal(0),
            requests=row["requests"],
            unpriced_requests=row["unpriced_requests"],
            partial_requests=row["partial_requests"],
            priority_usd=row["priority_usd"] or Decimal(0),
            priced=row["priced_requests"] > 0,
        )
    for row in (await conn.execute(_FEE_BUCKETS, params)).mappings():
        side = sides.setdefault((row["day"], fee_line(row["fee"])), LedgerSide(priced=True))
        side.usd += row["usd"] or Decimal(0)
    return sides
