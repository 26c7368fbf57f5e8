"""meter's reader of the upstream's usage and cost reports, against servers on real sockets: it
follows `next_page` through a range longer than one page of the demo upstream, and turns every
answer that is not a readable report into a ReconcileError that says what was wrong."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meter.reconcile.upstream import COST_REPORT, USAGE_REPORT, ReconcileError, fetch_upstream
from meter.upstream_demo import DemoConfig
from meter.upstream_demo.config import DEFAULT_ADMIN_API_KEY
from tests.integration.test_demo_upstream import serve
from tests.support import free_port


@pytest.mark.asyncio
async def test_every_page_of_both_reports_is_read() -> None:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=44)  # 45 days: two pages of 31 buckets
    async with serve(DemoConfig()) as url, aiohttp.ClientSession() as http:
        for day, usd, tokens in ((start, "0.25", 10), (today, "1.5", 20)):
            adjustment = {"model": "claude-haiku-4-5", "day": day.isoformat(), "usd": usd, "output_tokens": tokens}
            async with http.post(url + "/_demo/report-adjustments", json=adjustment) as response:
                assert response.status == 201
        sides = await fetch_upstream(url, DEFAULT_ADMIN_API_KEY, start, today + timedelta(days=1))
        async with http.get(url + "/_demo/seen") as response:
            seen = [entry["path"] for entry in (await response.json())["requests"]]
    assert sides.keys() == {(start, "claude-haiku-4-5"), (today, "claude-haiku-4-5")}
    first, last = sides[start, "claude-haiku-4-5"], sides[today, "claude-haiku-4-5"]
    assert (first.counts["output_tokens"], first.usd) == (10, Decimal("0.25"))
    assert (last.counts["output_tokens"], last.usd) == (20, Decimal("1.5"))
    for path in (USAGE_REPORT, COST_REPORT):
        pages = [p for p in seen if p.startswith(path + "?")]
        assert len(pages) == 2 and "page=" not in pages[0] and "page=" in pages[1], pages


@asynccontextmanager
async def answering(answer: Callable[[web.Request], dict[str, Any]], status: int = 200) -> AsyncIterator[str]:
    """A server on a real socket that answers every GET with `answer(request)` as JSON."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(answer(request), status=status)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def report(results: list[dict[str, Any]], **paging: Any) -> Callable[[web.Request], dict[str, Any]]:
    bucket = {"starting_at": "2026-12-02T00:00:00Z", "ending_at": "2026-12-03T00:00:00Z", "results": results}
    return lambda _: {"data": [bucket], "has_more": False, "next_page": None, **paging}


DAY = datetime(2026, 12, 2, tzinfo=UTC).date()
USAGE = {"model": "m", "uncached_input_tokens": 1, "output_tokens": 2}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "status", "says"),
    [
        (lambda _: {"type": "error", "error": {"type": "api_error", "message": "boom"}}, 500, "HTTP 500: boom"),
        (lambda _: {"data": "nope"}, 200, "`data` is not a list"),
        (report([USAGE], has_more=True), 200, "has_more without a next_page"),
        (report([{**USAGE, "output_tokens": -3}]), 200, "output_tokens is -3"),
        (report([{"model": "m", "cost_type": "tokens", "amount": 1.5, "currency": "USD"}]), 200, "amount 1.5"),
        (report([{"model": "m", "cost_type": "tokens", "amount": "1", "currency": "EUR"}]), 200, "not USD"),
        (lambda _: {"data": [{"starting_at": "someday", "results": []}]}, 200, "not a time"),
    ],
)
async def test_unreadable_reports_are_errors(
    answer: Callable[[web.Request], dict[str, Any]], status: int, says: str
) -> None:
    def either(request: web.Request) -> dict[str, Any]:
        # The usage report is read first: a cost-report case needs a good usage report before it.
        if request.path == USAGE_REPORT and ("amount" in says or "USD" in says):
            return report([USAGE])(request)
        return answer(request)

    async with answering(either, status) as url:
        with pytest.raises(ReconcileError, match=says):
            await fetch_upstream(url, "sk-ant-admin-x", DAY, DAY + timedelta(days=1))


@pytest.mark.asyncio
async def test_an_unreachable_upstream_is_an_error() -> None:
    with pytest.raises(ReconcileError, match="could not be reached"):
        await fetch_upstream(f"http://127.0.0.1:{free_port()}", "sk-ant-admin-x", DAY, DAY + timedelta(days=1))
