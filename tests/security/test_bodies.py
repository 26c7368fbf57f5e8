"""Hostile bodies: values of the fields meter relies on that are not what they claim, keys that two
JSON parsers would read differently (a duplicate, also spelled with escapes), nesting meant to exhaust
a parser, and bodies that are not JSON objects at all. Each is a 400 in the endpoint's own dialect,
and none reaches the upstream; the same bodies made well-formed do."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.security.checks import UpstreamWatch, anthropic_error, openai_error
from tests.support import Ledger, Process

MESSAGES = [{"role": "user", "content": "hi"}]
ENDPOINTS = ("/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions")


def valid(path: str) -> dict[str, Any]:
    if path == "/v1/messages/count_tokens":
        return {"model": "claude-sonnet-4-6", "messages": MESSAGES}
    return {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": MESSAGES}


def with_fields(**fields: Any) -> Callable[[str], bytes]:
    return lambda path: json.dumps({**valid(path), **fields}).encode()


def raw(text: bytes) -> Callable[[str], bytes]:
    return lambda path: text


def nested(depth: int) -> Callable[[str], bytes]:
    """A valid body whose `metadata` makes it `depth` levels deep (the body itself is level 1)."""
    return lambda path: (
        json.dumps(valid(path))[:-1].encode() + b', "metadata": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    )


def spliced(extra: bytes, **fields: Any) -> Callable[[str], bytes]:
    """A valid body (with `fields`) with raw JSON text `extra` put in front of its first key."""
    return lambda path: b"{" + extra + b"," + json.dumps({**valid(path), **fields}).encode()[1:]


def tool(path: str, schema: bytes) -> bytes:
    """A valid body with one tool whose input schema is the raw JSON text `schema`."""
    if path == "/v1/chat/completions":
        tools = b'[{"type":"function","function":{"name":"t","parameters":' + schema + b"}}]"
    else:
        tools = b'[{"name":"t","input_schema":' + schema + b"}]"
    return json.dumps(valid(path))[:-1].encode() + b', "tools": ' + tools + b"}"


HOSTILE_FIELDS: dict[str, Callable[[str], bytes]] = {
    "model a number": with_fields(model=5),
    "model a list": with_fields(model=["claude-sonnet-4-6"]),
    "model an object": with_fields(model={"id": "claude-sonnet-4-6"}),
    "model empty": with_fields(model=""),
    "model null": with_fields(model=None),
    "model too long": with_fields(model="c" * 257),
    "model with NUL": with_fields(model="claude\u0000"),
    "model with a newline": with_fields(model="claude\nx-injected: 1"),
    "model with ESC": with_fields(model="claude\u001b[31m"),
    "model with a line separator": with_fields(model="claude\u2028"),
    "stream a string": with_fields(stream="true"),
    "stream a number": with_fields(stream=1),
    "stream an object": with_fields(stream={}),
    "max_tokens negative": with_fields(max_tokens=-1),
    "max_tokens past 2^31-1": with_fields(max_tokens=2**31),
    "max_tokens huge": raw(b'{"model":"claude-sonnet-4-6","max_tokens":1' + b"0" * 400 + b',"messages":[]}'),
    "max_tokens a float": with_fields(max_tokens=1.5),
    "max_tokens a string": with_fields(max_tokens="10"),
    "max_tokens a boolean": with_fields(max_tokens=True),
    "max_tokens 1e400": raw(b'{"model":"claude-sonnet-4-6","max_tokens":1e400,"messages":[]}'),
}
DUPLICATE_KEYS: dict[str, Callable[[str], bytes]] = {
    "model twice": spliced(b'"model":"claude-opus-4-1"'),
    "model escaped": spliced(b'"\\u006dodel":"claude-opus-4-1"'),
    "model escaped in upper case": spliced(b'"\\u006Dodel":"claude-opus-4-1"'),
    "max_tokens escaped": spliced(b'"max_\\u0074okens":100000', max_tokens=5),
    "stream escaped": spliced(b'"\\u0073tream":true', stream=False),
    "spaces before the colon": spliced(b'"model" \t\r\n :"claude-opus-4-1"'),
    "nested in a message": raw(
        b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","role":"assistant","content":"hi"}]}'
    ),
    "nested deep in a tool schema": lambda path: tool(
        path, b'{"type":"object","properties":{"a":{"type":"string","type":"number"}}}'
    ),
}
NESTING: dict[str, Callable[[str], bytes]] = {
    "101 levels": nested(101),
    "100,000 levels of lists": nested(100_000),
    "100,000 levels of objects": lambda path: (
        json.dumps(valid(path))[:-1].encode() + b', "metadata": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"
    ),
}
NOT_AN_OBJECT: dict[str, Callable[[str], bytes]] = {
    "a list": raw(b"[]"),
    "a string": raw(b'"model"'),
    "a number": raw(b"1"),
    "null": raw(b"null"),
    "empty": raw(b""),
    "truncated": raw(b'{"model":"claude-sonnet-4-6",'),
    "trailing garbage": lambda path: json.dumps(valid(path)).encode() + b"{}",
    "invalid UTF-8": raw(b'{"model":"claude-sonnet-4-6\xff","max_tokens":5,"messages":[]}'),
    "a lone surrogate": raw(b'{"model":"claude\\ud800","max_tokens":5,"messages":[]}'),
    "NaN": raw(b'{"model":"claude-sonnet-4-6","max_tokens":NaN,"messages":[]}'),
    "a UTF-8 BOM": lambda path: b"\xef\xbb\xbf" + json.dumps(valid(path)).encode(),
}
CASES = {**HOSTILE_FIELDS, **DUPLICATE_KEYS, **NESTING, **NOT_AN_OBJECT}


def headers(tenant_key: dict[str, Any]) -> dict[str, str]:
    return {"x-api-key": tenant_key["key"], "anthropic-version": "2023-06-01", "content-type": "application/json"}


def assert_invalid_request(path: str, response: httpx.Response) -> str:
    assert response.status_code == 400, response.text[:300]
    check = openai_error if path == "/v1/chat/completions" else anthropic_error
    return check(response.status_code, response.headers, response.content, "invalid_request_error")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_hostile_bodies_are_400_in_the_endpoints_dialect_and_never_forwarded(
    path: str, meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    with httpx.Client(base_url=meter.base_url, headers=headers(tenant_key), timeout=30) as client:
        for name, body in CASES.items():
            response = client.post(path, content=body(path))
            assert response.status_code == 400, (name, response.status_code, response.text[:300])
            assert_invalid_request(path, response)
            assert "Traceback" not in response.text
    assert watch.new() == []


@pytest.mark.parametrize("path", ENDPOINTS)
def test_the_messages_of_the_refusals_say_what_is_wrong(path: str, meter: Process, tenant_key: dict[str, Any]) -> None:
    expected = {
        "model escaped": "repeats a key",
        "nested deep in a tool schema": "repeats a key",
        "100,000 levels of objects": "nested too deeply",
        "101 levels": "nested too deeply",
        "a list": "must be a JSON object",
        "model too long": "model",
        "max_tokens past 2^31-1": "max_tokens",
    }
    with httpx.Client(base_url=meter.base_url, headers=headers(tenant_key), timeout=30) as client:
        for name, fragment in expected.items():
            message = assert_invalid_request(path, client.post(path, content=CASES[name](path)))
            assert fragment in message, (name, message)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_the_same_bodies_made_well_formed_are_forwarded(
    path: str, meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    """The control of the refusals: as deep as allowed, keys that only look alike, and a key-like
    text inside a string all reach the upstream."""
    bodies = {
        "100 levels": nested(100)(path),
        "keys that differ only in case": tool(
            path, b'{"type":"object","properties":{"a":{"type":"string"},"A":{"type":"number"}}}'
        ),
        "a key-like text inside a string": with_fields(
            messages=[{"role": "user", "content": 'say "model": "x", \\"model\\": and \\\\"'}]
        )(path),
        "whitespace everywhere": b" \r\n\t" + json.dumps(valid(path), indent=3).encode() + b"\n ",
    }
    with httpx.Client(base_url=meter.base_url, headers=headers(tenant_key), timeout=30) as client:
        for name, body in bodies.items():
            watch = UpstreamWatch(upstream)
            response = client.post(path, content=body)
            assert response.status_code == 200, (name, response.text[:300])
            forwarded = "/v1/messages" if path == "/v1/chat/completions" else path
            assert watch.new() == [("POST", forwarded)], name


def test_an_event_stream_is_metered_as_a_stream_whatever_the_request_said(
    exposed: Process, hostile_upstream: Process, tenant_key: dict[str, Any], ledger: Ledger
) -> None:
    """The leaking upstream answers this request, which did not ask to stream, with an event
    stream: meter relays it as a stream and reads its usage from the events."""
    from tests.security.hostile_upstream import INPUT_TOKENS, OUTPUT_TOKENS

    for path in ("/v1/messages", "/v1/chat/completions"):
        response = httpx.post(
            exposed.base_url + path,
            content=json.dumps({**valid(path), "stream": False}).encode(),
            headers={**headers(tenant_key), "x-hostile-reply": "sse"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        row = ledger.row(response.headers["x-meter-request-id"])
        assert row["stream"] is True
        assert (row["input_tokens"], row["output_tokens"], row["partial"]) == (INPUT_TOKENS, OUTPUT_TOKENS, False)
