"""The official anthropic SDK through meter to the demo upstream: every call answers as upstream
would, and its ledger row holds exactly the usage the upstream reported, priced exactly."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import pytest

from tests.support import Ledger, Process

# Sonnet 4.6 list prices per million tokens: input, output, 5m write, 1h write, cache read.
SONNET = dict(zip(("in", "out", "w5m", "w1h", "read"), map(Decimal, ("3", "15", "3.75", "6", "0.30")), strict=True))
CACHE_HEADERS = {"x-demo-cache-read": "2048", "x-demo-cache-write-5m": "300", "x-demo-cache-write-1h": "1024"}
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")).decode()


def expected_cost(usage: Any) -> Decimal:
    split = usage.cache_creation
    five = split.ephemeral_5m_input_tokens if split else usage.cache_creation_input_tokens
    hour = split.ephemeral_1h_input_tokens if split else 0
    cost: Decimal = (
        usage.input_tokens * SONNET["in"]
        + usage.output_tokens * SONNET["out"]
        + five * SONNET["w5m"]
        + hour * SONNET["w1h"]
        + usage.cache_read_input_tokens * SONNET["read"]
    ) / 1_000_000
    return cost


def assert_row_matches(row: dict[str, Any], usage: Any, key: dict[str, Any], stream: bool) -> None:
    assert row["tenant_id"] == key["tenant_id"]
    assert row["key_id"] == key["id"]
    assert row["status"] == 200
    assert row["stream"] is stream
    assert row["partial"] is False
    assert row["input_tokens"] == usage.input_tokens
    assert row["output_tokens"] == usage.output_tokens
    assert row["cache_creation_input_tokens"] == (usage.cache_creation_input_tokens or 0)
    assert row["cache_read_input_tokens"] == (usage.cache_read_input_tokens or 0)
    if usage.cache_creation:
        assert row["cache_creation_5m_input_tokens"] == usage.cache_creation.ephemeral_5m_input_tokens
        assert row["cache_creation_1h_input_tokens"] == usage.cache_creation.ephemeral_1h_input_tokens
    assert row["cost_usd"] == expected_cost(usage)
    assert row["cost_usd"] > 0


@pytest.fixture
def client(meter: Process, tenant_key: dict[str, Any]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=meter.base_url, api_key=tenant_key["key"], max_retries=0) as client:
        yield client


def test_create_is_metered_exactly_with_cache_tokens(
    client: anthropic.Anthropic, tenant_key: dict[str, Any], ledger: Ledger
) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=[{"role": "user", "content": "Hello there"}],
        extra_headers=CACHE_HEADERS,
    )
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.usage.cache_read_input_tokens == 2048
    row = ledger.row(raw.headers["x-meter-request-id"])
    assert_row_matches(row, message.usage, tenant_key, stream=False)
    assert row["cache_creation_5m_input_tokens"] == 300
    assert row["cache_creation_1h_input_tokens"] == 1024
    assert row["stop_reason"] == "end_turn"
    assert row["upstream_request_id"] == raw.headers["request-id"]
    assert row["model"] == "claude-sonnet-4-6"
    assert row["endpoint"] == "messages"


def test_stream_final_message_is_metered_exactly(
    client: anthropic.Anthropic, tenant_key: dict[str, Any], ledger: Ledger
) -> None:
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=200,
        messages=[{"role": "user", "content": "Tell me a story"}],
        extra_headers={**CACHE_HEADERS, "x-demo-output-tokens": "40"},
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
        request_id = stream.response.headers["x-meter-request-id"]
    assert len(text.split()) == 40
    assert message.usage.output_tokens == 40
    row = ledger.row(request_id)
    assert_row_matches(row, message.usage, tenant_key, stream=True)
    assert row["ttfb_ms"] is not None


def test_tool_use_round_trip(client: anthropic.Anthropic, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    tools: Any = [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    first = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=300,
        tools=tools,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    message = first.parse()
    assert message.stop_reason == "tool_use"
    tool_use = next(block for block in message.content if block.type == "tool_use")
    assert tool_use.input == {"city": "demo"}
    assert ledger.row(first.headers["x-meter-request-id"])["stop_reason"] == "tool_use"

    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=300,
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": message.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "15C"}]},
        ],
    ) as stream:
        final = stream.get_final_message()
        request_id = stream.response.headers["x-meter-request-id"]
    assert final.stop_reason == "end_turn"
    assert_row_matches(ledger.row(request_id), final.usage, tenant_key, stream=True)


def test_image_block(client: anthropic.Anthropic, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    message = raw.parse()
    assert message.usage.input_tokens > 1600  # the demo upstream counts an image as 1600 tokens
    assert_row_matches(ledger.row(raw.headers["x-meter-request-id"]), message.usage, tenant_key, stream=False)


def test_count_tokens_and_models(client: anthropic.Anthropic, ledger: Ledger) -> None:
    raw = client.messages.with_raw_response.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert raw.parse().input_tokens > 0
    row = ledger.row(raw.headers["x-meter-request-id"])
    assert (row["endpoint"], row["cost_usd"]) == ("count_tokens", 0)

    models = list(client.models.list(limit=2))
    assert "claude-sonnet-4-6" in {model.id for model in models}
    assert client.models.retrieve("claude-sonnet-4-6").id == "claude-sonnet-4-6"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")


async def test_async_client_create_and_stream(meter: Process, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    client = anthropic.AsyncAnthropic(base_url=meter.base_url, api_key=tenant_key["key"], max_retries=0)
    async with client:
        raw = await client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers=CACHE_HEADERS,
        )
        message = await raw.parse()
        async with client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=[{"role": "user", "content": "Hi again"}],
            extra_headers=CACHE_HEADERS,
        ) as stream:
            final = await stream.get_final_message()
            stream_id = stream.response.headers["x-meter-request-id"]
        # Many at once: every one gets its own exact row.
        many = await asyncio.gather(
            *(
                client.messages.with_raw_response.create(
                    model="claude-sonnet-4-6",
                    max_tokens=64,
                    messages=[{"role": "user", "content": "x" * (i + 1) * 40}],
                )
                for i in range(20)
            )
        )
    rows = await asyncio.to_thread(
        lambda: [ledger.row(r.headers["x-meter-request-id"]) for r in [raw, *many]] + [ledger.row(stream_id)]
    )
    assert_row_matches(rows[0], message.usage, tenant_key, stream=False)
    assert_row_matches(rows[-1], final.usage, tenant_key, stream=True)
    for response, row in zip(many, rows[1:-1], strict=True):
        assert_row_matches(row, (await response.parse()).usage, tenant_key, stream=False)
