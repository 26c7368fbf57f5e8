"""Overspend is 0 for every kind of content meter cannot measure, over two meter processes: a daily
budget and prepaid credit each hold while 40 requests arrive at once, every one of which the demo
upstream bills as heavily as such a request can really be billed (`x-demo-*` controls): a PDF by
URL that fills the context window, images by URL, web searches with their results, a 1h cache
write of the whole prompt (its key also spelt with a JSON escape), and the same through the
OpenAI-compatible endpoint. A reservation by request bytes alone would have let each of these
spend several times its limit."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.support import Admin, Ledger, Process, start_meter

REQUESTS = 40
# Each server-tool step's results are bounded by the operator here, so web search fits a budget.
TOOL_RESULT_TOKENS = "20000"


@pytest.fixture(scope="module")
def meters(database_url: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    processes = [
        start_meter(
            database_url,
            upstream.base_url,
            tmp_path_factory.mktemp(f"w{i}"),
            METER_RESERVE_TOOL_RESULT_TOKENS=TOOL_RESULT_TOKENS,
        )
        for i in range(2)
    ]
    yield processes
    for process in processes:
        process.stop()


def text_block(size: int, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": "lorem " * (size // 6), **extra}


def anthropic_body(model: str, content: list[dict[str, Any]], **fields: Any) -> bytes:
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": content}], **fields}
    return json.dumps(body).encode()


URL_PDF = anthropic_body(
    "claude-haiku-4-5",
    [{"type": "document", "source": {"type": "url", "url": "https://example.com/report.pdf"}}, text_block(60)],
)
URL_IMAGES = anthropic_body(
    "claude-sonnet-4-6",
    [*({"type": "image", "source": {"type": "url", "url": f"https://example.com/{i}.png"}} for i in range(10)),
     text_block(60)],
)  # fmt: skip
WEB_SEARCH = anthropic_body(
    "claude-sonnet-4-6",
    [text_block(600)],
    tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
)
CACHED = anthropic_body("claude-sonnet-4-6", [text_block(30_000, cache_control={"type": "ephemeral", "ttl": "1h"})])
ESCAPED_CACHE = CACHED.replace(b'"cache_control"', b'"cache_\\u0063ontrol"')
CHAT = json.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "messages": [
            {
                "role": "user",
                "content": [
                    *({"type": "image_url", "image_url": {"url": f"https://example.com/{i}.png"}} for i in range(10)),
                    {"type": "text", "text": "What do these show?"},
                ],
            }
        ],
    }
).encode()

WRITES_ALL_1H = {"x-demo-input-tokens": "10", "x-demo-cache-write-1h": "30000"}
# (path, body, how the upstream bills each request, the limit to hold)
CASES = {
    # the PDF fills Haiku 4.5's 200K window: about $0.19 a request
    "pdf by url": ("/v1/messages", URL_PDF, {"x-demo-input-tokens": "190000"}, "1"),
    # ten images of at most 1,600 tokens each, and the text
    "images by url": ("/v1/messages", URL_IMAGES, {"x-demo-input-tokens": "16100"}, "1"),
    # five searches ($0.05) whose results grow the prompt to 100K tokens
    "web search": ("/v1/messages", WEB_SEARCH, {"x-demo-input-tokens": "100000", "x-demo-web-search": "5"}, "5"),
    # every byte of the prompt a token written to the 1h cache
    "1h cache write": ("/v1/messages", CACHED, WRITES_ALL_1H, "1"),
    "escaped cache key": ("/v1/messages", ESCAPED_CACHE, WRITES_ALL_1H, "1"),
    "chat completions": ("/v1/chat/completions", CHAT, {"x-demo-input-tokens": "16050"}, "1"),
}


def limited_key(meters: list[Process], limit_usd: str, prepaid: bool) -> tuple[dict[str, Any], Admin]:
    admin = Admin(meters[0].base_url)
    tenant = admin.create_tenant(f"worst-{secrets.token_hex(3)}")
    if prepaid:
        response = admin.request("POST", f"/admin/tenants/{tenant['id']}/credits", json={"amount_usd": limit_usd})
    else:
        response = admin.request("PUT", f"/admin/tenants/{tenant['id']}/limits", json={"budget_usd_per_day": limit_usd})
    assert response.status_code == 200, response.text
    return admin.issue_key(tenant["id"]), admin


async def fire(
    meters: list[Process], key: str, path: str, body: bytes, controls: dict[str, str]
) -> list[httpx.Response]:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json", **controls}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=REQUESTS)) as client:
        return await asyncio.gather(
            *(client.post(meters[i % 2].base_url + path, content=body, headers=headers) for i in range(REQUESTS))
        )


@pytest.mark.parametrize("prepaid", [False, True], ids=["daily budget", "prepaid credit"])
@pytest.mark.parametrize("case", list(CASES))
def test_no_overspend(meters: list[Process], ledger: Ledger, case: str, prepaid: bool) -> None:
    path, body, controls, limit = CASES[case]
    key, admin = limited_key(meters, limit, prepaid)
    responses = asyncio.run(fire(meters, key["key"], path, body, controls))
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code in (400, 429)]
    assert len(served) + len(refused) == REQUESTS, [(r.status_code, r.text[:200]) for r in responses]
    assert served and refused, "the limit must have been the binding constraint"
    costs = [ledger.row(response.headers["x-meter-request-id"])["cost_usd"] for response in served]
    spent = sum(row["cost_usd"] for row in ledger.rows(tenant_id=key["tenant_id"]))  # refusals cost 0
    assert spent == sum(costs) <= Decimal(limit)
    # Served without a bound that holds, the 40 requests would have cost more than the limit.
    assert REQUESTS * min(costs) > Decimal(limit)
    if prepaid:
        balance = admin.request("GET", f"/admin/tenants/{key['tenant_id']}/balance").json()
        assert Decimal(balance["balance_usd"]) == Decimal(limit) - spent >= 0
