"""The demo upstream speaks Anthropic's wire format: proven with the real `anthropic` SDK as client,
plus raw byte-level checks of the SSE stream, the error bodies and the `x-demo-*` controls, on a
real socket."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio
from aiohttp import web

from meter.upstream_demo import DemoConfig, create_demo_app
from meter.upstream_demo.replies import demo_text
from meter.upstream_demo.tokens import count_input_tokens
from tests.support import eventually_async

API_KEY = "sk-demo-test"
MODEL = "claude-sonnet-4-6"
VERSION = {"anthropic-version": "2023-06-01"}
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "metric": {"type": "boolean"},
            "hours": {"type": "array", "items": {"type": "integer"}},
            "options": {"type": "object"},
            "note": {"type": "string"},
        },
        "required": ["city", "days", "metric", "hours", "options"],
    },
}
EXPECTED_WEATHER_INPUT = {"city": "demo", "days": 1, "metric": True, "hours": [], "options": {}}
# Overridden per request: 30 cache reads, 40 + 2 cache writes split by TTL.
CACHE_HEADERS = {"x-demo-cache-read": "30", "x-demo-cache-write-5m": "40", "x-demo-cache-write-1h": "2"}


@asynccontextmanager
async def serve(config: DemoConfig) -> AsyncIterator[str]:
    """The demo app on a real socket (127.0.0.1, free port); yields its base URL."""
    runner = web.AppRunner(create_demo_app(config), access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def base_url() -> AsyncIterator[str]:
    async with serve(DemoConfig(api_key=API_KEY)) as url:
        yield url


@pytest_asyncio.fixture
async def client(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _request(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 100,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Hello there, demo."}],
        **extra,
    }


def _parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split a stream into (event name, data) pairs, checking each frame's exact shape."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = []
    for chunk in text[:-2].split("\n\n"):
        lines = chunk.split("\n")
        assert len(lines) == 2, chunk
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), chunk
        name, data = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    return events


# Through the real SDK


@pytest.mark.asyncio  # explicit, so the tests also run without asyncio_mode=auto
async def test_create_returns_a_message_with_deterministic_usage(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(**_request(), extra_headers=CACHE_HEADERS)
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert len(message.content) == 1 and message.content[0].type == "text"
    assert message.content[0].text == demo_text(12)
    usage = message.usage
    # "You are terse." is 14 chars -> 4 tokens; "Hello there, demo." is 18 chars -> 5 tokens.
    assert usage.input_tokens == 9 == count_input_tokens(_request())
    assert usage.output_tokens == 12
    assert usage.cache_read_input_tokens == 30
    assert usage.cache_creation_input_tokens == 42
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 40
    assert usage.cache_creation.ephemeral_1h_input_tokens == 2
    assert usage.service_tier == "standard"


@pytest.mark.asyncio
async def test_stream_usage_equals_create_usage(client: anthropic.AsyncAnthropic) -> None:
    headers = {**CACHE_HEADERS, "x-demo-output-tokens": "20"}
    created = await client.messages.create(**_request(), extra_headers=headers)
    async with client.messages.stream(**_request(), extra_headers=headers) as stream:
        texts = [text async for text in stream.text_stream]
        streamed = await stream.get_final_message()
    assert "".join(texts) == demo_text(20) == streamed.content[0].text  # type: ignore[union-attr]
    assert streamed.usage.model_dump() == created.usage.model_dump()
    assert streamed.usage.output_tokens == 20
    assert streamed.stop_reason == created.stop_reason == "end_turn"


@pytest.mark.asyncio
async def test_output_tokens_control_and_max_tokens_cut(client: anthropic.AsyncAnthropic) -> None:
    headers = {"x-demo-output-tokens": "50"}
    message = await client.messages.create(**_request(max_tokens=7), extra_headers=headers)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 7
    async with client.messages.stream(**_request(max_tokens=7), extra_headers=headers) as stream:
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "max_tokens" and streamed.usage.output_tokens == 7


@pytest.mark.asyncio
async def test_tool_use_reply(client: anthropic.AsyncAnthropic) -> None:
    request = _request(tools=[WEATHER_TOOL])
    message = await client.messages.create(**request)
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and text.text == "I'll use get_weather."
    assert isinstance(tool, anthropic.types.ToolUseBlock)
    assert tool.id.startswith("toolu_") and len(tool.id) == len("toolu_") + 24
    assert tool.name == "get_weather" and tool.input == EXPECTED_WEATHER_INPUT
    input_json = json.dumps(EXPECTED_WEATHER_INPUT, separators=(",", ":"))
    assert message.usage.output_tokens == 3 + len(input_json) // 4 + 10

    async with client.messages.stream(**request) as stream:
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert isinstance(streamed.content[1], anthropic.types.ToolUseBlock)
    assert streamed.content[1].input == EXPECTED_WEATHER_INPUT
    assert streamed.usage.output_tokens == message.usage.output_tokens


@pytest.mark.asyncio
async def test_tool_choice_and_tool_result_pick_the_reply_kind(client: anthropic.AsyncAnthropic) -> None:
    other = {"name": "lookup", "input_schema": {"type": "object", "properties": {}}}
    named = await client.messages.create(
        **_request(tools=[WEATHER_TOOL, other], tool_choice={"type": "tool", "name": "lookup"})
    )
    assert named.content[1].type == "tool_use" and named.content[1].name == "lookup"
    assert named.content[1].input == {}

    none = await client.messages.create(**_request(tools=[WEATHER_TOOL], tool_choice={"type": "none"}))
    assert none.stop_reason == "end_turn" and [b.type for b in none.content] == ["text"]

    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "15 C"}]},
    ]
    answered = await client.messages.create(**_request(messages=messages, tools=[WEATHER_TOOL]))
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


@pytest.mark.asyncio
async def test_count_tokens(client: anthropic.AsyncAnthropic) -> None:
    request = _request(tools=[WEATHER_TOOL])
    del request["max_tokens"]
    counted = await client.messages.count_tokens(**request)
    assert counted.input_tokens == count_input_tokens(request)
    message = await client.messages.create(**request, max_tokens=10, tool_choice={"type": "none"})
    assert message.usage.input_tokens == counted.input_tokens


@pytest.mark.asyncio
async def test_models_list_and_retrieve(client: anthropic.AsyncAnthropic) -> None:
    page = await client.models.list()
    ids = [model.id for model in page.data]
    assert ids[0] == "claude-opus-4-7" and len(ids) == 6
    assert {"claude-sonnet-4-6", "claude-haiku-4-5-20251001", "claude-sonnet-4-5-20250929"} <= set(ids)
    assert page.has_more is False and page.first_id == ids[0] and page.last_id == ids[-1]
    # Auto-pagination follows has_more / last_id two at a time and ends with the same list.
    assert [model.id async for model in client.models.list(limit=2)] == ids

    model = await client.models.retrieve("claude-haiku-4-5")
    assert model.type == "model" and model.display_name == "Claude Haiku 4.5"
    assert model.created_at.tzinfo is not None
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.models.retrieve("claude-nonexistent")
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


@pytest.mark.asyncio
async def test_status_errors_map_to_sdk_exceptions(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as rate_limited:
        await client.messages.create(**_request(), extra_headers={"x-demo-error": "429"})
    assert rate_limited.value.response.headers["retry-after"] == "7"
    assert rate_limited.value.request_id is not None and rate_limited.value.request_id.startswith("req_demo_")
    assert rate_limited.value.body["request_id"] == rate_limited.value.request_id  # type: ignore[index]

    overloaded_class = getattr(anthropic, "OverloadedError", anthropic.APIStatusError)
    with pytest.raises(overloaded_class) as overloaded:
        await client.messages.create(**_request(), extra_headers={"x-demo-error": "529"})
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}

    with pytest.raises(anthropic.InternalServerError) as internal:
        async with client.messages.stream(**_request(), extra_headers={"x-demo-error": "500"}) as stream:
            await stream.get_final_message()
    assert internal.value.status_code == 500


@pytest.mark.asyncio
async def test_midstream_error_raises_while_iterating(client: anthropic.AsyncAnthropic) -> None:
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(**_request(), extra_headers={"x-demo-error": "midstream"}) as stream:
            async for event in stream:
                seen.append(event.type)
    assert seen[0] == "message_start" and "content_block_delta" in seen
    assert "message_delta" not in seen
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


@pytest.mark.asyncio
async def test_wrong_key_is_an_authentication_error(base_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-wrong", max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await sdk.messages.create(**_request())
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    # The same key as a Bearer token is accepted.
    async with anthropic.AsyncAnthropic(base_url=base_url, auth_token=API_KEY, max_retries=0) as sdk:
        assert (await sdk.messages.create(**_request())).stop_reason == "end_turn"


# Raw bytes


@pytest.mark.asyncio
async def test_sse_bytes_follow_anthropic_event_order(base_url: str, http: aiohttp.ClientSession) -> None:
    headers = {**VERSION, "x-api-key": API_KEY, **CACHE_HEADERS}
    async with http.post(
        f"{base_url}/v1/messages?beta=true", json=_request(stream=True, tools=[WEATHER_TOOL]), headers=headers
    ) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["request-id"].startswith("req_demo_")
        events = _parse_sse(await response.read())
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("ping") == 1
    # Two blocks, each start -> deltas -> stop, with matching indexes.
    body = [(name, data.get("index")) for name, data in events[3:-2]]
    assert body[0] == ("content_block_delta", 0)
    assert body[body.index(("content_block_stop", 0)) + 1] == ("content_block_start", 1)
    assert body[-1] == ("content_block_stop", 1)

    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"] == {
        "input_tokens": start["usage"]["input_tokens"],
        "cache_creation_input_tokens": 42,
        "cache_read_input_tokens": 30,
        "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 2},
        "output_tokens": 1,
        "service_tier": "standard",
        "inference_geo": "not_available",
    }
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    tool_start = next(d for n, d in events if n == "content_block_start" and d["index"] == 1)
    assert tool_start["content_block"]["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1)
    assert json.loads(partial) == EXPECTED_WEATHER_INPUT
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert set(delta["usage"]) == {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    }


@pytest.mark.asyncio
async def test_request_errors_are_anthropic_json(base_url: str, http: aiohttp.ClientSession) -> None:
    url = f"{base_url}/v1/messages"
    auth = {"x-api-key": API_KEY}
    full = {**auth, **VERSION}
    invalid = "invalid_request_error"
    cases: list[tuple[dict[str, str], Any, int, str, str]] = [
        (auth, _request(), 400, invalid, "anthropic-version"),
        (full, "{not json", 400, invalid, "JSON"),
        (full, {"model": MODEL, "messages": []}, 400, invalid, "max_tokens"),
        (full, {"max_tokens": 5, "messages": []}, 400, invalid, "model"),
        ({**full, "x-demo-output-tokens": "many"}, _request(), 400, invalid, "x-demo-output-tokens"),
        ({**full, "x-demo-error": "418"}, _request(), 400, invalid, "x-demo-error"),
        ({**full, "x-demo-error": "midstream"}, _request(), 400, invalid, "x-demo-error"),
        (VERSION, _request(), 401, "authentication_error", "x-api-key"),
    ]
    for headers, body, status, error_type, needle in cases:
        data = body if isinstance(body, str) else json.dumps(body)
        async with http.post(url, data=data, headers=headers) as response:
            assert response.status == status, needle
            assert response.headers["content-type"] == "application/json"
            payload = await response.json()
        assert payload["type"] == "error" and payload["error"]["type"] == error_type
        assert needle in payload["error"]["message"]
        assert payload["request_id"] == response.headers["request-id"]

    async with http.get(f"{base_url}/v1/nowhere", headers=auth) as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "not_found_error"


@pytest.mark.asyncio
async def test_last_request_reports_what_arrived(base_url: str, http: aiohttp.ClientSession) -> None:
    raw = json.dumps(_request()).encode()
    headers = {**VERSION, "x-api-key": API_KEY, "anthropic-beta": "a-1", "X-Custom": "Kept"}
    async with http.post(f"{base_url}/v1/messages?beta=true", data=raw, headers=headers) as response:
        assert response.status == 200
    async with http.get(f"{base_url}/_demo/last-request") as response:
        seen = await response.json()
    assert seen["method"] == "POST" and seen["path"] == "/v1/messages" and seen["query"] == "beta=true"
    assert seen["headers"]["anthropic-beta"] == "a-1" and seen["headers"]["x-custom"] == "Kept"
    assert seen["body_sha256"] == hashlib.sha256(raw).hexdigest()


@pytest.mark.asyncio
async def test_drop_aborts_the_connection(base_url: str, http: aiohttp.ClientSession) -> None:
    headers = {**VERSION, "x-api-key": API_KEY, "x-demo-error": "drop"}
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{base_url}/v1/messages", json=_request(stream=True), headers=headers) as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                received += chunk
    assert received.startswith(b"event: message_start\n") and b"message_delta" not in received
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(f"{base_url}/v1/messages", json=_request(), headers=headers) as response:
            await response.read()


@pytest.mark.asyncio
async def test_latency_delays_the_answer(base_url: str, http: aiohttp.ClientSession) -> None:
    """A request sent after a delayed one, and not delayed itself, is answered first."""
    answered: list[str] = []

    async def send(name: str, **extra: str) -> None:
        headers = {**VERSION, "x-api-key": API_KEY, "x-custom": name, **extra}
        async with http.post(f"{base_url}/v1/messages", json=_request(), headers=headers) as response:
            assert response.status == 200
            await response.read()
        answered.append(name)

    async def last_request_is(name: str) -> bool:
        async with http.get(f"{base_url}/_demo/last-request") as response:  # 404 before any request
            return response.status == 200 and (await response.json())["headers"].get("x-custom") == name

    delayed = asyncio.create_task(send("delayed", **{"x-demo-latency-ms": "1000"}))
    await eventually_async(lambda: last_request_is("delayed"), waiting_for="the delayed request to arrive")
    await send("prompt")
    await delayed
    assert answered == ["prompt", "delayed"]


@pytest.mark.asyncio
async def test_pings_fill_the_pauses_of_a_paced_stream(http: aiohttp.ClientSession) -> None:
    # 3 tokens a delta at 20 tokens/s: a 0.15 s pause before each delta, longer than the 0.02 s
    # ping interval, so the pause always ends with a ping, whatever the machine's speed.
    async with serve(DemoConfig(tokens_per_second=20, ping_interval_s=0.02)) as url:
        headers = {**VERSION, "x-demo-output-tokens": "6"}
        async with http.post(f"{url}/v1/messages", json=_request(stream=True), headers=headers) as response:
            names = [name for name, _ in _parse_sse(await response.read())]
    deltas = [index for index, name in enumerate(names) if name == "content_block_delta"]
    assert len(deltas) == 2
    assert [names[index - 1] for index in deltas] == ["ping", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
