"""The demo upstream's Admin API on a real socket: its usage and cost reports count what it answered
to the real `anthropic` SDK (JSON and streams split anywhere), only the admin key reads them, and
`/_demo/report-adjustments` changes them on purpose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from meter.upstream_demo import DemoConfig
from meter.upstream_demo.config import DEFAULT_ADMIN_API_KEY
from meter.upstream_demo.replies import demo_text
from tests.integration.test_demo_upstream import serve

API_KEY = "sk-demo-test"
ADMIN = {"x-api-key": DEFAULT_ADMIN_API_KEY, "anthropic-version": "2023-06-01"}
USAGE_REPORT = "/v1/organizations/usage_report/messages"
COST_REPORT = "/v1/organizations/cost_report"
HELLO: Any = [{"role": "user", "content": "Hello there, demo."}]  # 5 input tokens


@pytest_asyncio.fixture
async def base_url() -> AsyncIterator[str]:
    async with serve(DemoConfig(api_key=API_KEY)) as url:
        yield url


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def today() -> dict[str, str]:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=1)
    return {"starting_at": start.isoformat(), "ending_at": end.isoformat()}


async def report(http: aiohttp.ClientSession, url: str, **params: Any) -> dict[str, Any]:
    async with http.get(url, params={**today(), **params}, headers=ADMIN) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


@pytest.mark.asyncio
async def test_reports_count_what_the_sdk_was_answered(base_url: str, http: aiohttp.ClientSession) -> None:
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as sdk:
        searched = await sdk.messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=HELLO,
            extra_headers={"x-demo-web-search": "2", "x-demo-cache-read": "1000"},
        )
        assert searched.usage.server_tool_use is not None and searched.usage.server_tool_use.web_search_requests == 2
        async with sdk.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=HELLO,
            extra_headers={"x-demo-split": "3", "x-demo-output-tokens": "40", "x-demo-service-tier": "batch"},
        ) as stream:
            streamed = await stream.get_final_message()
        # Split into pieces of at most 64 bytes, the stream still reads whole.
        assert streamed.content[0].type == "text" and streamed.content[0].text == demo_text(40)
        assert streamed.usage.service_tier == "batch" and streamed.usage.output_tokens == 40
        # A failed call is not billed.
        with pytest.raises(anthropic.APIStatusError):
            await sdk.messages.create(
                model="claude-haiku-4-5", max_tokens=100, messages=HELLO, extra_headers={"x-demo-error": "529"}
            )

    (bucket,) = (await report(http, base_url + USAGE_REPORT, **{"group_by[]": ["model", "service_tier"]}))["data"]
    assert [(r["model"], r["service_tier"]) for r in bucket["results"]] == [
        ("claude-haiku-4-5", "batch"),
        ("claude-haiku-4-5", "standard"),
    ]
    batch, standard = bucket["results"]
    assert (batch["uncached_input_tokens"], batch["output_tokens"]) == (5, 40)
    assert (standard["uncached_input_tokens"], standard["cache_read_input_tokens"], standard["output_tokens"]) == (
        5,
        1000,
        12,
    )
    assert standard["server_tool_use"] == {"web_search_requests": 2}

    (costs,) = (await report(http, base_url + COST_REPORT))["data"]
    # Haiku 4.5: (5 x $1 + 1000 x $0.10 + 12 x $5) + (5 x $1 + 40 x $5) x 0.5 per million, plus $0.02 of searches
    expected_usd = (5 + 100 + 60 + Decimal(205) / 2) / 1_000_000 + Decimal("0.02")
    (total,) = costs["results"]
    assert Decimal(total["amount"]) == expected_usd * 100 and total["currency"] == "USD"


@pytest.mark.asyncio
async def test_only_the_admin_key_reads_the_reports(base_url: str, http: aiohttp.ClientSession) -> None:
    for headers in ({**ADMIN, "x-api-key": API_KEY}, {**ADMIN, "x-api-key": "sk-ant-admin-other"}, {}):
        async with http.get(base_url + COST_REPORT, params=today(), headers=headers) as response:
            assert response.status == 401
            body = await response.json()
            assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    async with http.get(base_url + COST_REPORT, params=today(), headers={"x-api-key": DEFAULT_ADMIN_API_KEY}) as answer:
        assert answer.status == 400 and "anthropic-version" in (await answer.json())["error"]["message"]
    # And the admin key is not an API key.
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key=DEFAULT_ADMIN_API_KEY, max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError):
            await sdk.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=HELLO)


@pytest.mark.asyncio
async def test_adjustments_change_the_reports_until_cleared(base_url: str, http: aiohttp.ClientSession) -> None:
    day = datetime.now(UTC).date().isoformat()
    adjustment = {"model": "claude-opus-4-7", "day": day, "usd": "0.37", "output_tokens": 250}
    async with http.post(base_url + "/_demo/report-adjustments", json=adjustment) as response:
        assert response.status == 201, await response.text()
    async with http.get(base_url + "/_demo/report-adjustments") as response:
        assert (await response.json())["adjustments"] == [adjustment]
    (bucket,) = (await report(http, base_url + USAGE_REPORT, **{"group_by[]": "model"}))["data"]
    assert [(r["model"], r["output_tokens"]) for r in bucket["results"]] == [("claude-opus-4-7", 250)]
    (costs,) = (await report(http, base_url + COST_REPORT, **{"group_by[]": "description"}))["data"]
    (line,) = costs["results"]
    assert (line["model"], line["token_type"], line["amount"]) == ("claude-opus-4-7", "output_tokens", "37")

    for bad in ({"model": "m", "day": "tomorrow"}, {"model": "m", "day": day, "usd": 0.1}, {"day": day}, [1]):
        async with http.post(base_url + "/_demo/report-adjustments", json=bad) as response:
            assert response.status == 400, bad
    async with http.delete(base_url + "/_demo/report-adjustments") as response:
        assert response.status == 200
    (costs,) = (await report(http, base_url + COST_REPORT))["data"]
    assert costs["results"] == []
