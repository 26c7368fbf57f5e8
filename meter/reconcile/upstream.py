"""The upstream's side: Anthropic's messages usage report and cost report for a range of UTC days,
every page of each, bucketed by (day, model).

Both are asked for in 1d buckets: the usage report grouped by model, the cost report grouped by
description (which itemises it by model, token type and tier; without it a bucket is one total).
The cost report's amounts are cents as decimal strings, turned into USD exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from meter.periods import midnight
from meter.reconcile.report import KINDS, BucketKey, Side, cost_line

USAGE_REPORT = "/v1/organizations/usage_report/messages"
COST_REPORT = "/v1/organizations/cost_report"
ANTHROPIC_VERSION = "2023-06-01"
# The most 1d buckets either report gives in one page.
DAYS_PER_PAGE = 31
# A range of a year is 12 pages; more than this many means the upstream's paging is broken.
MAX_PAGES = 100
TIMEOUT_S = 60.0


class ReconcileError(Exception):
    """The upstream's reports could not be read: unreachable, refused, or not what Anthropic sends."""


async def fetch_upstream(
    base_url: str, admin_key: str, start: date, end: date, transport: httpx.AsyncBaseTransport | None = None
) -> dict[BucketKey, Side]:
    """The upstream's usage and cost of each (day, model) of [start, end)."""
    headers = {"x-api-key": admin_key, "anthropic-version": ANTHROPIC_VERSION}
    sides: dict[BucketKey, Side] = {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=TIMEOUT_S, transport=transport) as client:
        async for day, result in _results(client, USAGE_REPORT, start, end, "model"):
            side = sides.setdefault((day, _text(result, "model") or "(no model)"), Side())
            for kind, count in _usage_counts(result).items():
                side.counts[kind] += count
        async for day, result in _results(client, COST_REPORT, start, end, "description"):
            if result.get("currency") != "USD":
                raise ReconcileError(f"cost report: currency {result.get('currency')!r}, not USD")
            cost_type = _text(result, "cost_type")
            model = _text(result, "model")
            line = model if cost_type == "tokens" and model else cost_line(cost_type or "unknown")
            sides.setdefault((day, line), Side()).usd += _cents(result.get("amount")) / 100
    return sides


async def _results(
    client: httpx.AsyncClient, path: str, start: date, end: date, group_by: str
) -> AsyncIterator[tuple[date, dict[str, Any]]]:
    """(day, result) of every result of every page of one report, for the days of [start, end)."""
    params: dict[str, str | list[str]] = {
        "starting_at": _rfc3339(midnight(start)),
        "ending_at": _rfc3339(midnight(end)),
        "bucket_width": "1d",
        "group_by[]": [group_by],
        "limit": str(DAYS_PER_PAGE),
    }
    for _ in range(MAX_PAGES):
        body = await _get(client, path, params)
        for bucket in _list(body, "data", path):
            day = _bucket_day(bucket, path)
            if start <= day < end:
                for result in _list(bucket, "results", path):
                    if not isinstance(result, dict):
                        raise ReconcileError(f"{path}: a result is not an object")
                    yield day, result
        if not body.get("has_more"):
            return
        page = body.get("next_page")
        if not isinstance(page, str) or not page:
            raise ReconcileError(f"{path}: has_more without a next_page")
        params["page"] = page
    raise ReconcileError(f"{path}: more than {MAX_PAGES} pages")


async def _get(client: httpx.AsyncClient, path: str, params: dict[str, str | list[str]]) -> dict[str, Any]:
    try:
        response = await client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise ReconcileError(f"{path}: the upstream could not be reached: {exc!r}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else response.text[:200]
        raise ReconcileError(f"{path}: HTTP {response.status_code}: {message}")
    if not isinstance(body, dict):
        raise ReconcileError(f"{path}: the answer is not a JSON object")
    return body


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _list(container: dict[str, Any], name: str, path: str) -> list[Any]:
    value = container.get(name)
    if not isinstance(value, list):
        raise ReconcileError(f"{path}: `{name}` is not a list")
    return value


def _bucket_day(bucket: Any, path: str) -> date:
    start = bucket.get("starting_at") if isinstance(bucket, dict) else None
    try:
        if isinstance(start, str):
            return datetime.fromisoformat(start).date()
    except ValueError:
        pass
    raise ReconcileError(f"{path}: a bucket's starting_at is {start!r}, not a time")


def _text(result: dict[str, Any], name: str) -> str | None:
    value = result.get(name)
    return value if isinstance(value, str) and value else None


def _count(value: Any, name: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReconcileError(f"usage report: {name} is {value!r}, not a count")
    return value


def _usage_counts(result: dict[str, Any]) -> dict[str, int]:
    cache = result.get("cache_creation") or {}
    tools = result.get("server_tool_use") or {}
    if not isinstance(cache, dict) or not isinstance(tools, dict):
        raise ReconcileError("usage report: cache_creation and server_tool_use must be objects")
    values = (
        result.get("uncached_input_tokens"),
        cache.get("ephemeral_5m_input_tokens"),
        cache.get("ephemeral_1h_input_tokens"),
        result.get("cache_read_input_tokens"),
        result.get("output_tokens"),
        tools.get("web_search_requests"),
    )
    return {kind: _count(value, kind) for kind, value in zip(KINDS, values, strict=True)}


def _cents(amount: Any) -> Decimal:
    try:
        cents = Decimal(amount) if isinstance(amount, str) else None
    except InvalidOperation:
        cents = None
    if cents is None or not cents.is_finite():
        raise ReconcileError(f"cost report: amount {amount!r} is not a decimal string")
    return cents
