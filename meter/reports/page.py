"""The query of Anthropic's report endpoints: `starting_at` (required, RFC 3339), `ending_at`
(default: now), `bucket_width` (1m, 1h or 1d), `limit` (buckets per page: default and most by
width, as Anthropic documents them), `page` (the previous answer's `next_page`), and arrays
spelled `name[]=` (the SDKs) or `name=`. A bucket is in the page when it starts at or after
`starting_at` snapped down to the width, and before `ending_at`; `next_page` names the first bucket
of the next page."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from meter.errors import InvalidRequest

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
PAGE_PREFIX = "page_"


@dataclass(frozen=True)
class Query:
    values: Mapping[str, str]
    arrays: Mapping[str, list[str]]

    def array(self, name: str, allowed: Sequence[str] | None = None) -> list[str]:
        items = self.arrays.get(name, [])
        for item in items:
            if allowed is not None and item not in allowed:
                raise InvalidRequest(f"{name}[]: Input should be one of {list(allowed)}, got {item!r}")
        return items


def read_query(raw: bytes) -> Query:
    values: dict[str, str] = {}
    arrays: dict[str, list[str]] = {}
    for name, items in parse_qs(raw.decode("latin-1"), keep_blank_values=True).items():
        plain = name.removesuffix("[]")
        values[plain] = items[-1]
        arrays.setdefault(plain, []).extend(items)
    return Query(values, arrays)


@dataclass(frozen=True)
class Page:
    width: int
    starts: list[int]  # Unix time of each bucket's start
    next_page: str | None

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.starts[0], UTC)

    @property
    def end(self) -> datetime:
        return datetime.fromtimestamp(self.starts[-1] + self.width, UTC)

    def envelope(self, results: Mapping[int, list[dict[str, Any]]]) -> dict[str, Any]:
        data = [
            {"starting_at": rfc3339(s), "ending_at": rfc3339(s + self.width), "results": results.get(s, [])}
            for s in self.starts
        ]
        return {"data": data, "has_more": self.next_page is not None, "next_page": self.next_page}


def rfc3339(moment: int) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(name: str, raw: str) -> int:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: Input should be a valid RFC 3339 datetime, got {raw!r}") from None
    if moment.tzinfo is None:
        raise InvalidRequest(f"{name}: a time zone is required (e.g. Z)")
    return int(moment.timestamp())


def _page_start(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.removeprefix(PAGE_PREFIX).encode()).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(f"page: not a page token: {token!r}") from None
    return _time("page", text)


def _page_token(start: int) -> str:
    return PAGE_PREFIX + base64.urlsafe_b64encode(rfc3339(start).encode()).decode()


def read_page(query: Query, widths: Sequence[str]) -> Page:
    """The buckets of the page the query asks for; InvalidRequest for a query Anthropic refuses."""
    width_name = query.values.get("bucket_width", "1d")
    if width_name not in widths:
        raise InvalidRequest(f"bucket_width: Input should be one of {list(widths)}, got {width_name!r}")
    width = WIDTHS[width_name]
    default, maximum = LIMITS[width_name]
    raw_limit = query.values.get("limit", str(default))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= maximum:
        raise InvalidRequest(f"limit: Input should be an integer between 1 and {maximum}")
    limit = int(raw_limit)
    if "starting_at" not in query.values:
        raise InvalidRequest("starting_at: Field required")
    start = _time("starting_at", query.values["starting_at"])
    if "page" in query.values:
        start = max(start, _page_start(query.values["page"]))
    end = _time("ending_at", query.values["ending_at"]) if "ending_at" in query.values else int(time.time()) + 1
    first = start - start % width
    if end <= first:
        raise InvalidRequest("ending_at: must be after starting_at")
    if not datetime(1970, 1, 2, tzinfo=UTC).timestamp() <= first < datetime(9999, 1, 1, tzinfo=UTC).timestamp():
        raise InvalidRequest("starting_at: out of range")
    # Only as many bucket starts as a page shows (and one more, to know there is a next page).
    starts = list(range(first, min(end, first + (limit + 1) * width), width))
    more = len(starts) > limit
    return Page(width, starts[:limit], _page_token(starts[limit]) if more else None)
