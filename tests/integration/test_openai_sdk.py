"""The official openai SDK through meter's /v1/chat/completions to the demo upstream: translated
both ways, metered from the native Anthropic usage exactly like /v1/messages."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from tests.support import Admin, Ledger, Process, retry_after_ends_the

PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")).decode()
CACHE = {"x-demo-cache-read": "300", "x-demo-cache-write-5m": "40"}


@pytest.fixture
def client(meter: Process, tenant_key: dict[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=meter.base_url + "/v1", api_key=tenant_key["key"], max_retries=0) as client:
        yield client


def assert_row_matches(row: dict[str, Any], usage: Any, key: dict[str, Any], stream: bool) -> None:
    assert (row["tenant_id"], row["key_id"], row["endpoint"], row["stream"]) == (
        key["tenant_id"],
        key["id"],
        "chat.completions",
        stream,
    )
    prompt = row["input_tokens"] + row["cache_creation_input_tokens"] + row["cache_read_input_tokens"]
    assert prompt == usage.prompt_tokens
    assert row["output_tokens"] == usage.completion_tokens
    assert row["cache_read_input_tokens"] == usage.prompt_tokens_details.cached_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert row["cost_usd"] > 0 and row["partial"] is False and row["status"] == 200


def test_plain_chat_with_system_prompt(client: openai.OpenAI, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello"}],
        max_tokens=50,
        extra_headers=CACHE,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 300
    row = ledger.row(raw.headers["x-meter-request-id"])
    assert_row_matches(row, completion.usage, tenant_key, stream=False)
    assert row["model"] == "claude-sonnet-4-6"


def test_multi_turn_image_and_length(client: openai.OpenAI, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku-4-5",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
        max_completion_tokens=5,
        extra_headers={"x-demo-output-tokens": "40"},
    )
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.prompt_tokens > 1600  # the image counts
    assert_row_matches(ledger.row(raw.headers["x-meter-request-id"]), completion.usage, tenant_key, stream=False)


def test_tool_call_round_trip(client: openai.OpenAI, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="claude-sonnet-4-6", messages=messages, tools=tools, max_tokens=200)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "demo"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "15C and rain"},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6", messages=messages, tools=tools, max_tokens=200
    )
    second = raw.parse()
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    assert_row_matches(ledger.row(raw.headers["x-meter-request-id"]), second.usage, tenant_key, stream=False)


def test_streaming_with_include_usage(client: openai.OpenAI, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={**CACHE, "x-demo-output-tokens": "25"},
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 25
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])
    assert_row_matches(ledger.row(raw.headers["x-meter-request-id"]), usage, tenant_key, stream=True)


def test_async_client(meter: Process, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    async def run() -> list[tuple[str, Any, bool]]:
        async with openai.AsyncOpenAI(
            base_url=meter.base_url + "/v1", api_key=tenant_key["key"], max_retries=0
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Hi"}], max_tokens=30
            )
            plain = raw.parse()
            streamed = await client.chat.completions.with_raw_response.create(
                model="claude-sonnet-4-6",
                messages=[{"role": "user", "content": "Hi again"}],
                max_tokens=30,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in streamed.parse()]
            return [
                (raw.headers["x-meter-request-id"], plain.usage, False),
                (streamed.headers["x-meter-request-id"], chunks[-1].usage, True),
            ]

    for request_id, usage, stream in asyncio.run(run()):
        assert_row_matches(ledger.row(request_id), usage, tenant_key, stream)


def test_wrong_key_and_unsupported_parameters(meter: Process, client: openai.OpenAI) -> None:
    with (
        openai.OpenAI(base_url=meter.base_url + "/v1", api_key="sk-meter-wrong", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as denied,
    ):
        stranger.chat.completions.create(model="claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}])
    assert denied.value.status_code == 401
    assert denied.value.body["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}], n=2)
    assert refused.value.param == "n"


def test_over_budget_is_rate_limit_error(meter: Process, admin: Admin) -> None:
    key = admin.issue_key(admin.create_tenant("openai-budget")["id"])
    limits = admin.request("PUT", f"/admin/tenants/{key['tenant_id']}/limits", json={"budget_usd_per_day": "0.0001"})
    assert limits.status_code == 200  # before the key's first request: no process has it cached
    sent = datetime.now(UTC)
    with (
        openai.OpenAI(base_url=meter.base_url + "/v1", api_key=key["key"], max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}], max_tokens=1000
        )
    answered = datetime.now(UTC)
    headers = caught.value.response.headers
    retry_after = int(headers["retry-after"])
    assert retry_after_ends_the("day", retry_after, sent, answered)
    # The SDKs wait out a retry-after of up to a minute; past that, meter tells them not to retry.
    assert headers.get("x-should-retry") == ("false" if retry_after > 60 else None)
    assert caught.value.code == "rate_limit_exceeded"


def test_models_in_openai_shape(client: openai.OpenAI, meter: Process, tenant_key: dict[str, Any]) -> None:
    models = list(client.models.list())
    assert "claude-sonnet-4-6" in {model.id for model in models}
    assert all(model.object == "model" and model.owned_by == "anthropic" for model in models)
    assert client.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5"
