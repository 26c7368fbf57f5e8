"""`GET /v1/organizations/cost_report` for one tenant, from the ledger: 1d buckets of what meter
billed, in cents as decimal strings (USD). Without `group_by[]=description` a bucket has one
total; with it, one token line per model, service tier and context window (`cost_type` "tokens",
`token_type` null: the ledger keeps each call's exact cost, not its split by token type) and one
model-less line per server-tool fee (`web_search`), as Anthropic's report itemises them. Every
amount is the ledger's exact sum; calls of unpriced models cost nothing here, as in the ledger.
Unlike Anthropic's report, priority-tier calls are in it: meter bills them like any other."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.money import decimal_text
from meter.reports.page import Query, read_page
from meter.reports.usage import BILLED_ENDPOINTS
from meter.upstream_demo.reports import display_name

GROUPS = ("workspace_id", "description")
FIELDS = ("model", "cost_type", "token_type", "context_window", "service_tier", "description")
# (model, service tier, context window) of a token line.
_LINE = """
    COALESCE(e.response_model, e.model) AS model,
    COALESCE(e.service_tier, 'standard') AS service_tier,
    CASE WHEN e.long_context THEN '200k-1M' ELSE '0-200k' END AS context_window
"""
_WHERE = """
    e.tenant_id = :tenant AND e.started_at >= :start AND e.started_at < :end
    AND e.endpoint = ANY(:endpoints) AND e.cost_usd IS NOT NULL
"""
_BUCKET = "CAST(floor(extract(epoch FROM e.started_at) / 86400) * 86400 AS bigint) AS bucket"
_COSTS = text(
    f"SELECT {_BUCKET}, {_LINE}, sum(e.cost_usd) AS usd FROM usage_events e WHERE {_WHERE} GROUP BY 1, 2, 3, 4"
)
_FEES = text(
    f"""
    SELECT {_BUCKET}, {_LINE}, f.key AS fee, sum((f.value ->> 'usd')::numeric) AS usd
    FROM usage_events e
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(e.fees) = 'object' THEN e.fees ELSE '{{}}'::jsonb END) f
    WHERE {_WHERE}
    GROUP BY 1, 2, 3, 4, 5
    """
)

Line = tuple[str | None, str, str | None, str | None, str | None, str]


async def cost_report(conn: AsyncConnection, tenant_id: str, query: Query) -> dict[str, Any]:
    page = read_page(query, ("1d",))
    itemised = "description" in query.array("group_by", GROUPS)
    params = {"tenant": tenant_id, "start": page.start, "end": page.end, "endpoints": list(BILLED_ENDPOINTS)}
    lines: dict[int, dict[Line, Decimal]] = {}
    for row in (await conn.execute(_COSTS, params)).mappings():
        line = _token_line(row["model"], row["service_tier"], row["context_window"])
        into = lines.setdefault(row["bucket"], {})
        into[line] = into.get(line, Decimal(0)) + row["usd"]
    for row in (await conn.execute(_FEES, params)).mappings():
        # A fee moves from its call's token line to the fee's own line.
        into = lines.setdefault(row["bucket"], {})
        token_line = _token_line(row["model"], row["service_tier"], row["context_window"])
        into[token_line] -= row["usd"]
        fee_line = _fee_line(row["fee"])
        into[fee_line] = into.get(fee_line, Decimal(0)) + row["usd"]
    results: dict[int, list[dict[str, Any]]] = {}
    for bucket, amounts in lines.items():
        if itemised:
            results[bucket] = [_result(line, usd) for line, usd in sorted(amounts.items(), key=_order)]
        else:
            results[bucket] = [_result(None, sum(amounts.values(), Decimal(0)))]
    return page.envelope(results)


def _token_line(model: str | None, tier: str, window: str) -> Line:
    description = f"{display_name(model or 'unknown')} Usage"
    if tier == "batch":
        description += " (Batch)"
    if window == "200k-1M":
        description += " (Long Context)"
    return model, "tokens", None, window, tier, description


def _fee_line(fee: str) -> Line:
    if fee == "web_search_requests":
        return None, "web_search", None, None, None, "Web Search"
    name = fee.removesuffix("_requests")
    return None, name, None, None, None, name.replace("_", " ").title()


def _order(item: tuple[Line, Decimal]) -> tuple[str, ...]:
    return tuple(value or "" for value in item[0])


def _result(line: Line | None, usd: Decimal) -> dict[str, Any]:
    fields = dict(zip(FIELDS, line or (None,) * len(FIELDS), strict=True))
    return {"currency": "USD", "amount": decimal_text(usd * 100), "workspace_id": None, **fields}
