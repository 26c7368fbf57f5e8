"""The OpenAI Chat Completions <-> Anthropic Messages translation, checked against the real openai SDK.

Pure: the SDK talks to an in-memory transport that runs meter's endpoint, no sockets.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from meter.errors import MeterError, RateLimited
from meter.openai_compat import (
    ChunkTranslator,
    OpenAIRequestError,
    UpstreamFormatError,
    anthropic_error_to_openai,
    openai_error_body,
    to_anthropic,
    to_openai,
)
from meter.openai_compat.endpoint import ChatCompletions

MODEL = "claude-sonnet-4-6"
CREATED = 1754550000


def translate(request: dict[str, Any]) -> dict[str, Any]:
    body, model, _, _ = to_anthropic(json.dumps(request).encode())
    assert model == request["model"]
    out: dict[str, Any] = json.loads(body)
    return out


def refused(request: dict[str, Any] | bytes) -> OpenAIRequestError:
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    with pytest.raises(OpenAIRequestError) as caught:
        to_anthropic(body)
    return caught.value


def chat(*messages: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), **params}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- request ---------------------------------------------------------------------------------


def test_minimal_request() -> None:
    request = b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"Hi"}]}'
    body, model, stream, include_usage = to_anthropic(request)
    assert json.loads(body) == {
        "model": "claude-haiku-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [text("Hi")]}],
    }
    assert (model, stream, include_usage) == ("claude-haiku-4-5", False, False)


def test_system_and_developer_messages_merge_in_order() -> None:
    out = translate(
        chat(
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [text("Answer in French."), text("")]},
            user("Hi"),
            {"role": "system", "content": "Never apologise."},
            {"role": "assistant", "content": "Salut."},
            user("Weather?"),
        )
    )
    assert out["system"] == [text("Be terse."), text("Answer in French."), text("Never apologise.")]
    assert out["messages"] == [
        {"role": "user", "content": [text("Hi")]},
        {"role": "assistant", "content": [text("Salut.")]},
        {"role": "user", "content": [text("Weather?")]},
    ]


def test_multi_turn_and_consecutive_user_messages_merge() -> None:
    out = translate(
        chat(user("a"), user([text("b"), text("c")]), {"role": "assistant", "content": [text("d")], "name": "bot"})
    )
    assert out["messages"] == [
        {"role": "user", "content": [text("a"), text("b"), text("c")]},
        {"role": "assistant", "content": [text("d")]},
    ]


def test_images_from_data_urls_and_https_urls() -> None:
    out = translate(
        chat(
            user(
                [
                    text("Compare"),
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KG=="}},
                    {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/4AAQ", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a"}},
                ]
            )
        )
    )
    assert out["messages"][0]["content"] == [
        text("Compare"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KG=="}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            "title": "a",
        },
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}, "image_url.url"),
        ({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}, "image_url.url"),
        ({"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}, "image_url.url"),
        ({"type": "image_url", "image_url": {}}, "image_url.url"),
        ({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}, "type"),
        ({"type": "file", "file": {"file_id": "file-1"}}, "file"),
        ({"type": "file", "file": {"file_data": "data:text/csv;base64,YQ=="}}, "file.file_data"),
        ({"type": "video"}, "type"),
        ({"type": "text", "text": 3}, "text"),
    ],
)
def test_bad_content_parts_are_refused(part: dict[str, Any], param: str) -> None:
    assert refused(chat(user([text("look:"), part]))).param == f"messages[0].content[1].{param}"


def test_tool_call_round_trip_keeps_ids_and_alternation() -> None:
    out = translate(
        chat(
            user("Weather and time in Paris?"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [call("toolu_1", "get_weather", '{"city":"Paris"}'), call("toolu_2", "get_time", "")],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "15°C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [text("14:00")]},
            user("And tomorrow?"),
            {"role": "assistant", "content": None, "tool_calls": [call("toolu_3", "get_weather", '{"day": 1}')]},
            {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": [text("Weather and time in Paris?")]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "15°C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("14:00")]},
                text("And tomorrow?"),
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {"day": 1}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
    ]
    roles = [turn["role"] for turn in out["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))


def test_assistant_text_and_refusal_parts_and_empty_assistant_dropped() -> None:
    out = translate(
        chat(
            user("a"),
            {"role": "assistant", "content": [text("b"), {"type": "refusal", "refusal": "no"}]},
            user("c"),
            {"role": "assistant", "content": None},
            user("d"),
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": [text("a")]},
        {"role": "assistant", "content": [text("b"), text("no")]},
        {"role": "user", "content": [text("c"), text("d")]},
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"city"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": arguments}}
    error = refused(chat(user("x"), {"role": "assistant", "tool_calls": [call]}))
    assert error.param == "messages[1].tool_calls[0].function.arguments"
    assert "JSON object" in error.message


def test_max_tokens() -> None:
    assert translate(chat(user("x")))["max_tokens"] == 4096
    assert translate(chat(user("x"), max_tokens=100))["max_tokens"] == 100
    assert translate(chat(user("x"), max_completion_tokens=50))["max_tokens"] == 50
    assert translate(chat(user("x"), max_tokens=100, max_completion_tokens=50))["max_tokens"] == 50
    assert translate(chat(user("x"), max_tokens=None))["max_tokens"] == 4096
    assert refused(chat(user("x"), max_completion_tokens=0)).param == "max_completion_tokens"
    assert refused(chat(user("x"), max_tokens="10")).param == "max_tokens"


def test_sampling_stop_stream_and_user() -> None:
    out = translate(chat(user("x"), temperature=0.7, top_p=0.9, stop="END", user="u-1", seed=7, store=False))
    assert (out["temperature"], out["top_p"], out["stop_sequences"]) == (0.7, 0.9, ["END"])
    assert out["metadata"] == {"user_id": "u-1"}
    assert "seed" not in out and "store" not in out
    assert translate(chat(user("x"), temperature=1.8))["temperature"] == 1
    assert translate(chat(user("x"), temperature=-1))["temperature"] == 0
    assert translate(chat(user("x"), stop=["a", "b"]))["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in translate(chat(user("x"), stop=None))
    assert translate(chat(user("x"), user="u", safety_identifier="s"))["metadata"] == {"user_id": "s"}
    assert refused(chat(user("x"), stop=[1])).param == "stop"
    assert refused(chat(user("x"), temperature=True)).param == "temperature"


def test_stream_flags() -> None:
    def flags(**params: Any) -> tuple[bool, bool, bool]:
        body, _, stream, include_usage = to_anthropic(json.dumps(chat(user("x"), **params)).encode())
        return stream, include_usage, json.loads(body).get("stream", False)

    assert flags() == (False, False, False)
    assert flags(stream=True) == (True, False, True)
    assert flags(stream=True, stream_options={"include_usage": True}) == (True, True, True)
    assert flags(stream=True, stream_options={"include_usage": False}) == (True, False, True)
    assert flags(stream=False, stream_options={"include_usage": True}) == (False, False, False)
    assert refused(chat(user("x"), stream="yes")).param == "stream"
    error = refused(chat(user("x"), stream=True, stream_options={"include_usage": 1}))
    assert error.param == "stream_options.include_usage"


WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def test_tools() -> None:
    out = translate(chat(user("x"), tools=[WEATHER, CLOCK]))
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),  # Anthropic does not allow the switch on "none"
        ("auto", True, {"type": "auto"}),
        (None, True, None),
    ],
)
def test_tool_choice(tool_choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    out = translate(chat(user("x"), tools=[WEATHER], tool_choice=tool_choice, parallel_tool_calls=parallel))
    assert out.get("tool_choice") == expected


def test_tool_choice_without_tools() -> None:
    assert "tool_choice" not in translate(chat(user("x"), tool_choice="none"))
    assert "tool_choice" not in translate(chat(user("x"), parallel_tool_calls=False))
    assert refused(chat(user("x"), tool_choice="required")).param == "tool_choice"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 1}}]}, "tools[0].function.parameters"),
        ({"tools": {"type": "function"}}, "tools"),
    ],
)
def test_bad_tools_are_refused(params: dict[str, Any], param: str) -> None:
    assert refused(chat(user("x"), **({"tools": [WEATHER]} | params))).param == param


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"top_k": 5}, "top_k"),  # not an OpenAI parameter: refused like OpenAI refuses unknown ones
    ],
)
def test_unsupported_parameters_are_refused_by_name(params: dict[str, Any], param: str) -> None:
    error = refused(chat(user("x"), **params))
    assert error.param == param
    assert param in error.message
    assert error.code in ("unsupported_parameter", "unknown_parameter")


def test_every_parameter_of_the_installed_sdk_is_known() -> None:
    """A parameter the SDK learns later must be classified here, not refused as unknown."""
    ignored = {"self", "extra_headers", "extra_query", "extra_body", "timeout", "messages", "model"}
    sdk_params = set(inspect.signature(openai.resources.chat.Completions.create).parameters) - ignored
    for name in sorted(sdk_params):
        try:
            to_anthropic(json.dumps(chat(user("x"), **{name: {"probe": 1}})).encode())
        except OpenAIRequestError as error:
            assert error.param is not None and error.param.startswith(name), name
            assert error.code != "unknown_parameter", name


def test_harmless_values_of_unsupported_parameters_pass() -> None:
    out = translate(
        chat(
            user("x"),
            n=1,
            logprobs=False,
            logit_bias={},
            response_format={"type": "text"},
            modalities=["text"],
            presence_penalty=0,
            frequency_penalty=0.0,
            metadata={"k": "v"},
            service_tier="auto",
            top_logprobs=None,
        )
    )
    assert set(out) == {"model", "max_tokens", "messages"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (json.dumps({"messages": [user("x")]}).encode(), "model"),
        (json.dumps({"model": 3, "messages": [user("x")]}).encode(), "model"),
        (json.dumps({"model": MODEL}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": []}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": "Hi"}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": ["Hi"]}).encode(), "messages[0]"),
        (json.dumps(chat({"role": "robot", "content": "x"})).encode(), "messages[0].role"),
        (json.dumps(chat({"role": "function", "name": "f", "content": "x"})).encode(), "messages[0].role"),
        (json.dumps(chat(user(""))).encode(), "messages[0].content"),
        (json.dumps(chat(user(None))).encode(), "messages[0].content"),
        (json.dumps(chat(user({"text": "x"}))).encode(), "messages[0].content"),
        (json.dumps(chat({"role": "system", "content": "only instructions"})).encode(), "messages"),
        (json.dumps(chat(user("x"), {"role": "tool", "content": "15°C"})).encode(), "messages[1].tool_call_id"),
        (json.dumps(chat(user("x"), {"role": "assistant", "tool_calls": {}})).encode(), "messages[1].tool_calls"),
        (
            json.dumps(chat(user("x"), {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]})).encode(),
            "messages[1].tool_calls[0].id",
        ),
        (
            json.dumps(chat(user("x"), {"role": "assistant", "function_call": {"name": "f"}})).encode(),
            "messages[1].function_call",
        ),
    ],
)
def test_malformed_requests_are_refused(body: bytes, param: str | None) -> None:
    error = refused(body)
    assert error.param == param
    assert error.message


def test_request_error_body() -> None:
    error = refused(chat(user("x"), n=3))
    assert json.loads(error.body())["error"] == {
        "message": error.message,
        "type": "invalid_request_error",
        "param": "n",
        "code": "unsupported_parameter",
    }
    assert json.loads(openai_error_body("m", "server_error")) == {
        "error": {"message": "m", "type": "server_error", "param": None, "code": None}
    }


# --- response --------------------------------------------------------------------------------


def anthropic_message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: Any) -> bytes:
    return json.dumps(
        {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
        }
    ).encode()


def completion(anthropic_body: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(to_openai(anthropic_body, MODEL, CREATED))
    ChatCompletion.model_validate(out)
    return out


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("a_reason_added_later", "stop"),
    ],
)
def test_finish_reason(stop_reason: str, finish: str) -> None:
    out = completion(anthropic_message([text("Hi")], stop_reason))
    assert out["choices"][0]["finish_reason"] == finish
    assert ChatCompletion.model_validate(out).choices[0].finish_reason == finish


def test_text_response() -> None:
    out = completion(anthropic_message([text("Hello"), text(", world")]))
    assert out == {
        "id": "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, world", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def test_tool_use_response_with_thinking_and_cache_usage() -> None:
    body = anthropic_message(
        [
            {"type": "thinking", "thinking": "User wants weather...", "signature": "EqQB"},
            {"type": "redacted_thinking", "data": "xyz"},
            text("Checking."),
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "units": ["c"]}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ],
        "tool_use",
        input_tokens=2095,
        cache_creation_input_tokens=1024,
        cache_read_input_tokens=20480,
        cache_creation={"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1024},
        output_tokens=503,
        output_tokens_details={"thinking_tokens": 310},
        server_tool_use={"web_search_requests": 1},
    )
    out = completion(body)
    message = out["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert [(call["id"], call["function"]["name"]) for call in message["tool_calls"]] == [
        ("toolu_1", "get_weather"),
        ("toolu_2", "get_time"),
    ]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris", "units": ["c"]}
    assert message["tool_calls"][1]["function"]["arguments"] == "{}"
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"] == {
        "prompt_tokens": 2095 + 1024 + 20480,
        "completion_tokens": 503,
        "total_tokens": 2095 + 1024 + 20480 + 503,
        "prompt_tokens_details": {"cached_tokens": 20480, "cache_write_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 310},
    }
    parsed = ChatCompletion.model_validate(out)
    assert parsed.choices[0].message.tool_calls is not None
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 20480


def test_response_without_text_has_null_content() -> None:
    tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    out = completion(anthropic_message([{"type": "thinking", "thinking": "...", "signature": "s"}, tool], "tool_use"))
    assert out["choices"][0]["message"]["content"] is None
    assert "tool_calls" not in completion(anthropic_message([text("x")]))["choices"][0]["message"]


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"type":"message"}'])
def test_response_that_is_not_a_message(body: bytes) -> None:
    with pytest.raises(UpstreamFormatError):
        to_openai(body, MODEL, CREATED)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "anthropic_type", "openai_type", "code"),
    [
        (400, "invalid_request_error", "invalid_request_error", None),
        (401, "authentication_error", "authentication_error", "invalid_api_key"),
        (402, "billing_error", "insufficient_quota", "insufficient_quota"),
        (403, "permission_error", "permission_error", None),
        (404, "not_found_error", "not_found_error", None),
        (413, "request_too_large", "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", "server_error", None),
        (504, "timeout_error", "server_error", "timeout"),
        (529, "overloaded_error", "server_error", "overloaded"),
        (409, "some_new_error", "invalid_request_error", "some_new_error"),
        (503, "some_new_error", "server_error", "some_new_error"),
    ],
)
def test_anthropic_errors_in_openai_shape(status: int, anthropic_type: str, openai_type: str, code: str | None) -> None:
    body = {"type": "error", "error": {"type": anthropic_type, "message": "Boom"}, "request_id": "req_1"}
    out = json.loads(anthropic_error_to_openai(status, json.dumps(body).encode()))
    assert out == {"error": {"message": "Boom", "type": openai_type, "param": None, "code": code}}


def test_non_json_error_bodies() -> None:
    out = json.loads(anthropic_error_to_openai(502, b"<html>Bad Gateway</html>"))
    assert out["error"]["type"] == "server_error"
    assert out["error"]["message"] == "Upstream returned HTTP 502: <html>Bad Gateway</html>"
    out = json.loads(anthropic_error_to_openai(429, b""))
    assert out["error"] == {
        "message": "Upstream returned HTTP 429",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    out = json.loads(anthropic_error_to_openai(401, b'{"error": "nope"}'))
    assert (out["error"]["type"], out["error"]["message"]) == ("authentication_error", "Upstream error (HTTP 401)")


# --- stream ----------------------------------------------------------------------------------

# Anthropic's exact SSE format (shared/anthropic-protocol.md section 3): thinking, text with
# multi-byte characters, two tool calls, a ping, a comment, an unknown event, cache tokens, and
# two cumulative message_delta events (the last one wins).
TRANSCRIPT = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-6","content":[],"stop_reason":null,"stop_sequence":null,"usage":'
    b'{"input_tokens":19,"cache_creation_input_tokens":1324,"cache_read_input_tokens":2048,'
    b'"cache_creation":{"ephemeral_5m_input_tokens":300,"ephemeral_1h_input_tokens":1024},'
    b'"output_tokens":1,"service_tier":"standard"}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"",'
    b'"signature":""}}\n\n'
    b'event: ping\ndata: {"type":"ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Caf\xc3\xa9?"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Checking "}}\n\n'
    b": a comment line\n\n"
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta",'
    b'"text":"the caf\xc3\xa9 \xe2\x80\x94 \xf0\x9f\x8c\xa7"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n'
    b'event: something_new\ndata: {"type":"something_new","index":9}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1",'
    b'"name":"get_weather","input":{}}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta",'
    b'"partial_json":"{\\"city\\": \\"Par"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"is\\"}"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":2}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_2",'
    b'"name":"get_time","input":{}}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta",'
    b'"partial_json":"{\\"tz\\":\\"CET\\"}"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":3}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    b'"usage":{"output_tokens":80}}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    b'"usage":{"input_tokens":19,"cache_creation_input_tokens":1324,"cache_read_input_tokens":2048,'
    b'"output_tokens":87,"output_tokens_details":{"thinking_tokens":30}}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
ERROR_EVENT = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
USAGE = {
    "prompt_tokens": 19 + 1324 + 2048,
    "completion_tokens": 87,
    "total_tokens": 19 + 1324 + 2048 + 87,
    "prompt_tokens_details": {"cached_tokens": 2048, "cache_write_tokens": 1324},
    "completion_tokens_details": {"reasoning_tokens": 30},
}


def parse_sse(data: bytes) -> list[Any]:
    """OpenAI's stream as a list of chunk objects, with "[DONE]" kept as a string."""
    assert data.endswith(b"\n\n")
    frames = data[:-2].split(b"\n\n")
    assert all(frame.startswith(b"data: ") and b"\n" not in frame for frame in frames)  # no event: lines
    return [frame[6:].decode() if frame == b"data: [DONE]" else json.loads(frame[6:]) for frame in frames]


def run(chunks: list[bytes], include_usage: bool = True) -> list[Any]:
    translator = ChunkTranslator(MODEL, CREATED, include_usage)
    return parse_sse(b"".join(translator.feed(chunk) for chunk in chunks) + translator.finish())


def deltas(events: list[Any]) -> list[Any]:
    return [event["choices"][0]["delta"] if event != "[DONE]" and event["choices"] else event for event in events]


def test_stream_translation() -> None:
    events = run([TRANSCRIPT])
    assert deltas(events) == [
        {"role": "assistant", "content": ""},
        {"content": "Checking "},
        {"content": "the café — 🌧"},
        {"tool_calls": [{"index": 0, **call("toolu_1", "get_weather", "")}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Par'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]},
        {"tool_calls": [{"index": 1, **call("toolu_2", "get_time", "")}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"tz":"CET"}'}}]},
        {},
        events[-2],
        "[DONE]",
    ]
    chunks = events[:-1]
    for chunk in chunks:
        assert {key: chunk[key] for key in ("id", "object", "created", "model")} == {
            "id": "chatcmpl-msg_01",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
        }
        ChatCompletionChunk.model_validate(chunk)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:-1]] == [None] * 8 + ["tool_calls"]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == USAGE


def test_stream_without_include_usage() -> None:
    events = run([TRANSCRIPT], include_usage=False)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("usage" not in event for event in events[:-1])
    assert deltas(events)[:-1] == deltas(run([TRANSCRIPT]))[:-2]
    for chunk in events[:-1]:
        ChatCompletionChunk.model_validate(chunk)


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_stream_split_at_every_byte(line_end: bytes) -> None:
    expected = run([TRANSCRIPT])
    transcript = TRANSCRIPT.replace(b"\n", line_end)
    assert run([transcript]) == expected
    for cut in range(len(transcript) + 1):
        assert run([transcript[:cut], transcript[cut:]]) == expected, cut


def test_stream_fed_byte_by_byte() -> None:
    transcript = TRANSCRIPT.replace(b"\n", b"\r\n")
    assert run([transcript[i : i + 1] for i in range(len(transcript))]) == run([TRANSCRIPT])


def test_stream_survives_empty_chunks_between_cr_and_lf() -> None:
    transcript = TRANSCRIPT.replace(b"\n", b"\r\n")
    expected = run([TRANSCRIPT])
    for cut in (i + 1 for i, byte in enumerate(transcript) if byte == ord("\r")):
        assert run([transcript[:cut], b"", transcript[cut:]]) == expected, cut
    # An event whose data has no "type" depends on its event line surviving the split.
    untyped = b'event: content_block_delta\r\ndata: {"index":1,"delta":{"type":"text_delta","text":"Hi"}}\r\n\r\n'
    translator = ChunkTranslator(MODEL, CREATED, False)
    cut = untyped.index(b"\n")
    assert b'"content":"Hi"' in translator.feed(untyped[:cut]) + translator.feed(b"") + translator.feed(untyped[cut:])


def test_stream_output_is_sent_as_soon_as_each_event_arrives() -> None:
    translator = ChunkTranslator(MODEL, CREATED, True)
    events = [event + b"\n\n" for event in TRANSCRIPT.split(b"\n\n")[:-1]]
    outputs = [translator.feed(event) for event in events]
    assert b'"role":"assistant"' in outputs[0]
    assert [json.loads(out[6:])["choices"][0]["delta"] for out in outputs if out.count(b"data: ") == 1][1:3] == [
        {"content": "Checking "},
        {"content": "the café — 🌧"},
    ]
    assert outputs[-1].endswith(b"data: [DONE]\n\n")  # finish chunk, usage chunk and [DONE] at message_stop
    assert translator.finish() == b""
    assert translator.feed(ERROR_EVENT) == b""  # nothing after [DONE]


def test_stream_error_mid_stream() -> None:
    head = TRANSCRIPT.split(b"event: content_block_start\n", 3)
    prefix = b"event: content_block_start\n".join(head[:3])
    translator = ChunkTranslator(MODEL, CREATED, True)
    events = parse_sse(translator.feed(prefix + ERROR_EVENT) + translator.feed(TRANSCRIPT) + translator.finish())
    assert events[-1] == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded"}
    }
    assert "[DONE]" not in events
    assert deltas(events[:-1]) == [
        {"role": "assistant", "content": ""},
        {"content": "Checking "},
        {"content": "the café — 🌧"},
    ]


def test_stream_cut_off_before_message_delta_ends_with_an_error() -> None:
    cut = TRANSCRIPT.index(b"event: message_delta")
    events = run([TRANSCRIPT[:cut]])
    assert events[-1]["error"]["type"] == "server_error"
    assert "before the message was complete" in events[-1]["error"]["message"]
    assert "[DONE]" not in events


def test_stream_fail_ends_the_stream_once() -> None:
    translator = ChunkTranslator(MODEL, CREATED, False)
    head = translator.feed(TRANSCRIPT[: TRANSCRIPT.index(b"event: content_block_start")])
    tail = translator.fail("Upstream connection lost") + translator.fail("again") + translator.finish()
    events = parse_sse(head + tail)
    assert events[-1]["error"] == {
        "message": "Upstream connection lost",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert len(events) == 2


def test_stream_without_message_stop_still_closes() -> None:
    cut = TRANSCRIPT.index(b"event: message_stop")
    assert run([TRANSCRIPT[:cut]]) == run([TRANSCRIPT])
    # The last event's blank line went missing too: it is still the end of that event.
    assert run([TRANSCRIPT[: cut - 1]]) == run([TRANSCRIPT])


def test_stream_without_event_lines_and_server_tools() -> None:
    """Events are recognised by data.type when there is no event line; server tools stay hidden."""
    transcript = (
        b'data: {"type":"message_start","message":{"id":"msg_02","usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1",'
        b'"name":"web_search","input":{}}}\n\n'
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n'
        b'data: {"type":"content_block_start","index":1,"content_block":{"type":"web_search_tool_result",'
        b'"tool_use_id":"srvtoolu_1","content":[]}}\n\n'
        b'data: {"type":"content_block_start","index":2,"content_block":{"type":"text","text":"Found"}}\n\n'
        b'data: {"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{}}}\n\n'
        b'data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":9}}\n\n'
        b'data: {"type":"message_stop"}\n\n'
    )
    events = run([transcript])
    assert deltas(events) == [{"role": "assistant", "content": ""}, {"content": "Found"}, {}, events[-2], "[DONE]"]
    assert events[0]["id"] == "chatcmpl-msg_02"
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"]["total_tokens"] == 14


# --- through the real openai SDK ---------------------------------------------------------------


def sdk_client(upstream: Callable[[dict[str, Any], bool], httpx2.Response]) -> openai.OpenAI:
    """An openai client whose transport does with meter's real endpoint what the gateway does, around
    a fake Anthropic upstream (which may also raise meter's own refusals, as the limits stage does)."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        endpoint = ChatCompletions()
        try:
            anthropic_request = json.loads(endpoint.request(request.read()))
            stream = anthropic_request.get("stream") is True
            reply = upstream(anthropic_request, stream)
        except MeterError as error:
            return httpx2.Response(error.status, headers=error.headers, content=endpoint.error(error, "req_test"))
        if not stream or reply.status_code != 200:
            status, body = asyncio.run(endpoint.answer(reply.status_code, reply.read()))
            return httpx2.Response(status, content=body)
        translator = endpoint.stream()
        raw = reply.read()
        pieces = [translator.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)] + [translator.finish()]
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(pieces))

    return openai.OpenAI(
        api_key="mk-test",
        base_url="http://meter.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handle)),
        max_retries=0,
    )


def test_sdk_round_trip_with_tools() -> None:
    seen: list[dict[str, Any]] = []

    def upstream(body: dict[str, Any], stream: bool) -> httpx2.Response:
        seen.append(body)
        content = [{"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}}]
        return httpx2.Response(200, content=anthropic_message(content, "tool_use"))

    client = sdk_client(upstream)
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_completion_tokens=64,
        user="u-1",
    )
    assert seen[0]["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert seen[0]["max_tokens"] == 64 and seen[0]["system"] == [text("Be terse.")]
    assert reply.choices[0].finish_reason == "tool_calls"
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and calls[0].id == "toolu_9" and calls[0].type == "function"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


def test_sdk_stream_with_usage() -> None:
    client = sdk_client(lambda body, stream: httpx2.Response(200, content=TRANSCRIPT))
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Checking the café — 🌧"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == USAGE["total_tokens"]


def test_sdk_raises_on_a_mid_stream_error() -> None:
    cut = TRANSCRIPT.index(b"event: content_block_start")
    client = sdk_client(lambda body, stream: httpx2.Response(200, content=TRANSCRIPT[:cut] + ERROR_EVENT))
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(stream)


def test_sdk_sees_upstream_and_translation_errors() -> None:
    def rate_limited(body: dict[str, Any], stream: bool) -> httpx2.Response:
        error = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
        return httpx2.Response(429, content=json.dumps(error).encode())

    with pytest.raises(openai.RateLimitError) as limited:
        sdk_client(rate_limited).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert (limited.value.code, limited.value.type) == ("rate_limit_exceeded", "rate_limit_error")
    assert "Slow down" in limited.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        sdk_client(rate_limited).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2)
    assert (bad.value.param, bad.value.code) == ("n", "unsupported_parameter")


def test_sdk_sees_meters_own_refusals_in_openai_shape() -> None:
    def over_budget(body: dict[str, Any], stream: bool) -> httpx2.Response:
        raise RateLimited("This request would exceed the daily budget.", {"retry-after": "7"})

    with pytest.raises(openai.RateLimitError) as limited:
        sdk_client(over_budget).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert (limited.value.code, limited.value.type) == ("rate_limit_exceeded", "rate_limit_error")
    assert limited.value.response.headers["retry-after"] == "7"
    assert "daily budget" in limited.value.message
