"""Anthropic's Usage and Cost Admin API, answered from what the demo upstream has recorded.

`GET /v1/organizations/usage_report/messages`: time buckets (`bucket_width` 1m, 1h or 1d, UTC) of
token counters and web searches, cut by any subset of `group_by[]` (api_key_id, workspace_id,
model, service_tier, context_window, inference_geo, speed); a dimension not grouped by is null.
`GET /v1/organizations/cost_report`: 1d buckets of costs in cents as decimal strings, at the demo's
own list prices (prices.py); `group_by[]=description` itemises them by model, token type, tier and
context window, else each bucket has one total. As Anthropic's does, it leaves out priority-tier
calls (billed apart) and puts web searches on their own, model-less line.

Both take `starting_at` (required), `ending_at`, `limit` (buckets per page) and `page`; a bucket is
returned when it starts at or after `starting_at`, snapped down to the bucket width, and before
`ending_at` (default: now). `next_page` is the start of the next page's first bucket.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from meter.money import decimal_text
from meter.upstream_demo.errors import invalid_request
from meter.upstream_demo.prices import MILLION, SNAPSHOTS, TOKEN_TYPES, WEB_SEARCH_USD, multiplier, token_prices
from meter.upstream_demo.record import (
    COUNTERS,
    OUTPUT,
    READ,
    UNCACHED,
    WEB_SEARCHES,
    WRITE_1H,
    WRITE_5M,
    Adjustment,
    Key,
    Record,
)

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
# (default, maximum) buckets per page, by width, as Anthropic documents them.
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
USAGE_GROUPS = ("api_key_id", "workspace_id", "model", "service_tier", "context_window", "inference_geo", "speed")
COST_GROUPS = ("workspace_id", "description")
# Every demo call is made with the operator's one key, in the default workspace (null).
API_KEY_ID = "apikey_01DemoOperatorKey"
PAGE_PREFIX = "page_"
# The positions of the cost report's TOKEN_TYPES in a recorded total.
TOKEN_INDEXES = (UNCACHED, OUTPUT, WRITE_5M, WRITE_1H, READ)
TOKEN_LABELS = dict(
    zip(TOKEN_TYPES, ("Input Tokens", "Output Tokens", "5m Cache Write", "1h Cache Write", "Cache Read"), strict=True)
)


@dataclass(frozen=True)
class Page:
    width: int
    starts: list[int]  # Unix time of each bucket's start
    next_page: str | None

    def envelope(self, results: Mapping[int, list[dict[str, Any]]]) -> dict[str, Any]:
        data = [
            {"starting_at": _rfc3339(s), "ending_at": _rfc3339(s + self.width), "results": results.get(s, [])}
            for s in self.starts
        ]
        return {"data": data, "has_more": self.next_page is not None, "next_page": self.next_page}


def _rfc3339(moment: int) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(name: str, raw: str) -> int:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise invalid_request(f"{name}: Input should be a valid RFC 3339 datetime, got {raw!r}") from None
    if moment.tzinfo is None:
        raise invalid_request(f"{name}: a time zone is required (e.g. Z)")
    return int(moment.timestamp())


def _page_start(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.removeprefix(PAGE_PREFIX).encode()).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise invalid_request(f"page: not a page token: {token!r}") from None
    return _time("page", text)


def _page_token(start: int) -> str:
    return PAGE_PREFIX + base64.urlsafe_b64encode(_rfc3339(start).encode()).decode()


def parse_page(query: Mapping[str, str], widths: Sequence[str]) -> Page:
    """The buckets of this page of a report, from its query."""
    width_name = query.get("bucket_width", "1d")
    if width_name not in widths:
        raise invalid_request(f"bucket_width: Input should be one of {list(widths)}, got {width_name!r}")
    width = WIDTHS[width_name]
    default, maximum = LIMITS[width_name]
    try:
        limit = int(query.get("limit", default))
    except ValueError:
        raise invalid_request("limit: Input should be a valid integer") from None
    if not 1 <= limit <= maximum:
        raise invalid_request(f"limit: Input should be between 1 and {maximum}")
    if "starting_at" not in query:
        raise invalid_request("starting_at: Field required")
    start = _time("starting_at", query["starting_at"])
    if "page" in query:
        start = max(start, _page_start(query["page"]))
    end = _time("ending_at", query["ending_at"]) if "ending_at" in query else int(time.time()) + 1
    first = start - start % width
    starts = list(range(first, end, width))
    more = len(starts) > limit
    return Page(width, starts[:limit], _page_token(starts[limit]) if more else None)


def parse_groups(groups: list[str], allowed: Sequence[str]) -> frozenset[str]:
    for group in groups:
        if group not in allowed:
            raise invalid_request(f"group_by[]: Input should be one of {list(allowed)}, got {group!r}")
    return frozenset(groups)


def _day_start(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _totals_in(record: Record, page: Page) -> Iterator[tuple[int, Key, list[int]]]:
    """(bucket start, key, counters) of every recorded total in the page's buckets."""
    buckets = set(page.starts)
    for key, total in record.totals.items():
        bucket = key.minute - key.minute % page.width
        if bucket in buckets:
            yield bucket, key, total


def _adjustments_in(record: Record, page: Page) -> Iterator[tuple[int, Adjustment]]:
    """(bucket start, adjustment) of the adjustments of days in the page: each at its day's 00:00."""
    buckets = set(page.starts)
    for adjustment in record.adjustments:
        day = _day_start(adjustment.day)
        bucket = day - day % page.width
        if bucket in buckets:
            yield bucket, adjustment


def usage_report(record: Record, query: Mapping[str, str], group_by: list[str]) -> dict[str, Any]:
    page = parse_page(query, ("1m", "1h", "1d"))
    groups = parse_groups(group_by, USAGE_GROUPS)
    sums: dict[int, dict[tuple[str | None, ...], list[int]]] = {}
    adjusted = [
        (bucket, Key(bucket, adjustment.model, "standard", "0-200k", "not_available", None), _output(adjustment))
        for bucket, adjustment in _adjustments_in(record, page)
    ]
    for bucket, key, total in [*_totals_in(record, page), *adjusted]:
        dimensions = {
            "api_key_id": API_KEY_ID,
            "workspace_id": None,
            "model": key.model,
            "service_tier": key.service_tier,
            "context_window": key.context_window,
            "inference_geo": key.inference_geo,
            "speed": key.speed or "standard",
        }
        group = tuple(dimensions[name] if name in groups else None for name in USAGE_GROUPS)
        into = sums.setdefault(bucket, {}).setdefault(group, [0] * len(total))
        for index, count in enumerate(total):
            into[index] += count
    results = {
        bucket: [_usage_result(group, total) for group, total in sorted(by_group.items(), key=_sort_key)]
        for bucket, by_group in sums.items()
    }
    return page.envelope(results)


def _output(adjustment: Adjustment) -> list[int]:
    counters = [0] * COUNTERS
    counters[OUTPUT] = adjustment.output_tokens
    return counters


def _sort_key(item: tuple[tuple[str | None, ...], Any]) -> tuple[str, ...]:
    return tuple(value or "" for value in item[0])


def _usage_result(group: tuple[str | None, ...], total: list[int]) -> dict[str, Any]:
    return {
        "uncached_input_tokens": total[UNCACHED],
        "cache_creation": {"ephemeral_5m_input_tokens": total[WRITE_5M], "ephemeral_1h_input_tokens": total[WRITE_1H]},
        "cache_read_input_tokens": total[READ],
        "output_tokens": total[OUTPUT],
        "server_tool_use": {"web_search_requests": total[WEB_SEARCHES]},
        **dict(zip(USAGE_GROUPS, group, strict=True)),
    }


# (model, cost_type, token_type, context_window, service_tier, description) of a cost line
CostLine = tuple[str | None, str, str | None, str | None, str | None, str]
COST_FIELDS = ("model", "cost_type", "token_type", "context_window", "service_tier", "description")


def cost_report(record: Record, query: Mapping[str, str], group_by: list[str]) -> dict[str, Any]:
    page = parse_page(query, ("1d",))
    groups = parse_groups(group_by, COST_GROUPS)
    cents: dict[int, dict[CostLine, Decimal]] = {}
    for bucket, key, total in _totals_in(record, page):
        lines = cents.setdefault(bucket, {})
        for line, usd in _costs(key, total):
            lines[line] = lines.get(line, Decimal(0)) + usd * 100
    for bucket, adjustment in _adjustments_in(record, page):
        line = _token_line(adjustment.model, "output_tokens", "0-200k", "standard")
        lines = cents.setdefault(bucket, {})
        lines[line] = lines.get(line, Decimal(0)) + adjustment.usd * 100
    results: dict[int, list[dict[str, Any]]] = {}
    for bucket, lines in cents.items():
        if "description" in groups:
            results[bucket] = [_cost_result(line, amount) for line, amount in sorted(lines.items(), key=_sort_key)]
        else:
            results[bucket] = [_cost_result(None, sum(lines.values(), Decimal(0)))]
    return page.envelope(results)


def _costs(key: Key, total: list[int]) -> Iterator[tuple[CostLine, Decimal]]:
    """The USD cost lines of one recorded total; none for priority-tier calls or unpriced models'
    tokens, which Anthropic's cost report leaves out."""
    if key.service_tier == "priority":
        return
    prices = token_prices(key.model, key.context_window)
    if prices is not None:
        factor = multiplier(key.model, key.service_tier, key.inference_geo, key.speed)
        for (token_type, price), index in zip(prices.by_type().items(), TOKEN_INDEXES, strict=True):
            if total[index]:
                line = _token_line(key.model, token_type, key.context_window, key.service_tier)
                yield line, total[index] * price / MILLION * factor
    if total[WEB_SEARCHES]:
        yield (None, "web_search", None, None, None, "Web Search"), total[WEB_SEARCHES] * WEB_SEARCH_USD


def _token_line(model: str, token_type: str, window: str, tier: str) -> CostLine:
    description = f"{display_name(model)} Usage - {TOKEN_LABELS[token_type]}"
    if tier == "batch":
        description += " (Batch)"
    if window == "200k-1M":
        description += " (Long Context)"
    return model, "tokens", token_type, window, tier, description


def _cost_result(line: CostLine | None, amount: Decimal) -> dict[str, Any]:
    fields = dict(zip(COST_FIELDS, line or (None,) * len(COST_FIELDS), strict=True))
    return {"currency": "USD", "amount": decimal_text(amount), "workspace_id": None, **fields}


def display_name(model: str) -> str:
    """`claude-sonnet-4-5` -> "Claude Sonnet 4.5", `claude-sonnet-4-0` -> "Claude Sonnet 4"."""
    parts = SNAPSHOTS.get(model, model).split("-")
    if len(parts) < 3 or parts[0] != "claude" or not all(part.isdigit() for part in parts[2:4]):
        return model
    version = ".".join(part for part in parts[2:4] if part != "0")
    return f"Claude {parts[1].capitalize()} {version}"
