"""Failures, theirs and the client's: upstream errors arrive unmodified, bad input gets an
Anthropic-shaped error, and every authenticated request still leaves its ledger row."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import pytest

from tests.support import Ledger, Process

BODY: Any = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def client(meter: Process, tenant_key: dict[str, Any]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=meter.base_url, api_key=tenant_key["key"], max_retries=0) as client:
        yield client


def headers(key: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"x-api-key": key["key"], "anthropic-version": "2023-06-01", "content-type": "application/json", **extra}


def test_529_reaches_the_sdk_as_overloaded(client: anthropic.Anthropic, ledger: Ledger) -> None:
    with pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(**BODY, extra_headers={"x-demo-error": "529"})
    assert caught.value.status_code == 529
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["request-id"].startswith("req_demo_")
    row = ledger.row(caught.value.response.headers["x-meter-request-id"])
    assert (row["status"], row["error_type"], row["input_tokens"], row["cost_usd"]) == (529, "overloaded_error", 0, 0)


def test_429_from_upstream_keeps_retry_after(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**BODY, extra_headers={"x-demo-error": "429"})
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_500_is_relayed_unmodified(meter: Process, upstream: Process, tenant_key: dict[str, Any]) -> None:
    via_meter = httpx.post(
        meter.base_url + "/v1/messages", json=BODY, headers=headers(tenant_key, **{"x-demo-error": "500"})
    )
    direct = httpx.post(
        upstream.base_url + "/v1/messages",
        json=BODY,
        headers={**headers(tenant_key, **{"x-demo-error": "500"}), "x-api-key": "sk-ant-test-operator-key"},
    )
    assert via_meter.status_code == direct.status_code == 500
    assert without_request_id(via_meter.json()) == without_request_id(direct.json())


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name != "request_id"}


def test_midstream_error_event_reaches_the_sdk_and_row_is_partial(client: anthropic.Anthropic, ledger: Ledger) -> None:
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            **BODY, extra_headers={"x-demo-error": "midstream", "x-demo-output-tokens": "30"}
        ) as stream,
    ):
        for _ in stream:
            pass
    row = ledger.row(stream.response.headers["x-meter-request-id"])
    assert "Overloaded" in str(caught.value)
    assert (row["status"], row["error_type"], row["partial"]) == (200, "overloaded_error", True)
    assert row["input_tokens"] > 0 and row["output_tokens"] >= 2  # two deltas were seen
    assert row["cost_usd"] > 0


def test_dropped_upstream_stream_ends_with_error_frame(
    meter: Process, tenant_key: dict[str, Any], ledger: Ledger
) -> None:
    with httpx.stream(
        "POST",
        meter.base_url + "/v1/messages",
        json={**BODY, "stream": True},
        headers=headers(tenant_key, **{"x-demo-error": "drop"}),
    ) as response:
        body = b"".join(response.iter_bytes())
    assert b"event: message_start" in body
    assert body.rstrip().endswith(b'"message":"The upstream connection was lost mid-stream."}}')
    row = ledger.row(response.headers["x-meter-request-id"])
    assert (row["error_type"], row["partial"]) == ("upstream_disconnected", True)
    assert row["output_tokens"] >= 2


@pytest.mark.parametrize("failure", ["drop", "truncate"])
def test_a_json_answer_the_upstream_cuts_off_is_a_502_and_a_row(
    meter: Process, tenant_key: dict[str, Any], ledger: Ledger, failure: str
) -> None:
    """No answer at all, or half of one: the tenant gets meter's 502 api_error, never a 500."""
    response = httpx.post(
        meter.base_url + "/v1/messages", json=BODY, headers=headers(tenant_key, **{"x-demo-error": failure}), timeout=30
    )
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["type"] == "api_error" and "upstream API" in error["message"]
    row = ledger.row(response.headers["x-meter-request-id"])
    assert (row["status"], row["error_type"]) == (502, "api_error")


def test_client_disconnect_mid_stream_still_records_final_usage(
    meter: Process, tenant_key: dict[str, Any], ledger: Ledger
) -> None:
    """The client reads the first bytes of a slow stream and hangs up; meter keeps reading."""
    address = urlsplit(meter.base_url)
    body = b'{"model":"claude-sonnet-4-6","max_tokens":500,"stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: meter\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\nx-api-key: "
        + tenant_key["key"].encode()
        + b"\r\nx-demo-output-tokens: 60\r\nx-demo-tokens-per-second: 60\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(request)
        head = b""
        while b"event: message_start" not in head:
            head += sock.recv(65536)
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-meter-request-id:")
    )
    assert b"message_stop" not in head  # the client left mid-stream...
    row = ledger.row(request_id, timeout_s=15)
    # ...and meter read the upstream to its end: all 60 tokens and the final stop reason.
    assert (row["output_tokens"], row["partial"], row["stop_reason"]) == (60, False, "end_turn")
    assert row["cost_usd"] > 0


@pytest.mark.parametrize(
    ("body", "status", "error_type", "needle"),
    [
        (b"{not json", 400, "invalid_request_error", "not valid JSON"),
        (b'["a list"]', 400, "invalid_request_error", "JSON object"),
        (b'{"max_tokens": 5, "messages": []}', 400, "invalid_request_error", "model: Field required"),
        (b'{"model": 12, "max_tokens": 5}', 400, "invalid_request_error", "model"),
    ],
)
def test_bad_bodies_get_anthropic_errors_and_a_row(
    meter: Process, tenant_key: dict[str, Any], ledger: Ledger, body: bytes, status: int, error_type: str, needle: str
) -> None:
    response = httpx.post(meter.base_url + "/v1/messages", content=body, headers=headers(tenant_key))
    assert response.status_code == status
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == error_type
    assert needle in payload["error"]["message"]
    row = ledger.row(response.headers["x-meter-request-id"])
    assert (row["status"], row["error_type"], row["cost_usd"]) == (status, error_type, 0)


def test_40mb_body_is_request_too_large(client: anthropic.Anthropic, ledger: Ledger) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x" * (40 * 1024 * 1024)}]
        )
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert ledger.row(caught.value.response.headers["x-meter-request-id"])["status"] == 413


def test_unknown_path_and_wrong_method(meter: Process, tenant_key: dict[str, Any]) -> None:
    unknown = httpx.post(meter.base_url + "/v1/complete", json=BODY, headers=headers(tenant_key))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(meter.base_url + "/v1/messages", headers=headers(tenant_key))
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert httpx.head(meter.base_url + "/").status_code == 200
