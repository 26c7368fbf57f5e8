"""Headers that must stay on their side of meter. Upstream to tenant: the operator's organization
id, cookies, organization-wide rate limits and priority limits, hop-by-hop headers and any header the
upstream's `Connection` names; a limited tenant gets meter's rate-limit headers with its own limits
instead. Tenant to upstream: the tenant's credential (replaced by the operator's), cookies,
client-address headers, the workspace selector, hop-by-hop headers and any header the tenant's
`Connection` names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.hostile_upstream import KEPT, LEAKED_NAMES, SAW_COOKIE
from tests.security.wire import Connection, request_bytes
from tests.support import OPERATOR_KEY, Admin, Process, start_meter

BODY: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
CHAT: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
# What the demo upstream sends with every answer (meter/upstream_demo/wire.py, organization_headers).
DEMO_LEAKS = ("anthropic-organization-id", "set-cookie", "anthropic-ratelimit-requests-limit")


def leaked(headers: httpx.Headers, names: frozenset[str] | tuple[str, ...]) -> list[str]:
    return [
        name
        for name in headers
        if name in names or name.startswith(("anthropic-ratelimit-", "anthropic-priority-", "set-cookie"))
    ]


def tenant_headers(tenant_key: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"x-api-key": tenant_key["key"], "anthropic-version": "2023-06-01", **extra}


# (method, path, JSON body, extra request headers): one of each kind of answer.
DEMO_CALLS = [
    ("POST", "/v1/messages", BODY, {}),
    ("POST", "/v1/messages", {**BODY, "stream": True}, {}),
    ("POST", "/v1/messages", BODY, {"x-demo-error": "429"}),
    ("POST", "/v1/messages", BODY, {"x-demo-error": "500"}),
    ("POST", "/v1/messages/count_tokens", {"model": BODY["model"], "messages": BODY["messages"]}, {}),
    ("GET", "/v1/models", None, {}),
    ("GET", "/v1/models/claude-sonnet-4-6", None, {}),
    ("GET", "/v1/models/no-such-model", None, {}),
    ("POST", "/v1/chat/completions", CHAT, {}),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}, {}),
]


def test_the_demo_upstream_does_send_what_must_not_leak(upstream: Process) -> None:
    """The control of the next test: without meter in between, these headers are there."""
    for method, path, body, extra in DEMO_CALLS[:8]:
        response = httpx.request(
            method,
            upstream.base_url + path,
            json=body,
            headers={"x-api-key": OPERATOR_KEY, "anthropic-version": "2023-06-01", **extra},
        )
        assert all(name in response.headers for name in DEMO_LEAKS), (path, dict(response.headers))


@pytest.mark.parametrize(("method", "path", "body", "extra"), DEMO_CALLS)
def test_no_organization_header_reaches_the_tenant(
    method: str, path: str, body: Any, extra: dict[str, str], meter: Process, tenant_key: dict[str, Any]
) -> None:
    response = httpx.request(
        method, meter.base_url + path, json=body, headers=tenant_headers(tenant_key, **extra), timeout=30
    )
    assert response.headers["request-id"].startswith("req_demo_"), response.text  # the upstream answered
    assert leaked(response.headers, DEMO_LEAKS) == [], (path, response.status_code)
    assert "org-demo-operator" not in json.dumps(dict(response.headers)) + response.text


@pytest.mark.parametrize("reply", ["json", "sse", "error"])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/v1/chat/completions"])
def test_every_leaking_upstream_header_is_stripped(
    reply: str, path: str, exposed: Process, hostile_upstream: Process, tenant_key: dict[str, Any]
) -> None:
    # The control: straight from the leaking upstream, every one of them is there.
    direct = httpx.post(hostile_upstream.base_url + path, headers={"x-hostile-reply": reply})
    assert set(direct.headers) >= LEAKED_NAMES
    method = "GET" if path == "/v1/models" else "POST"
    body = None if method == "GET" else CHAT if path == "/v1/chat/completions" else BODY
    response = httpx.request(
        method,
        exposed.base_url + path,
        json=body,
        headers=tenant_headers(tenant_key, **{"x-hostile-reply": reply}),
        timeout=30,
    )
    names = set(response.headers)
    assert not names & LEAKED_NAMES, sorted(names & LEAKED_NAMES)
    assert leaked(response.headers, ()) == []
    assert response.headers[KEPT[0]] == KEPT[1]
    assert "operator-secret" not in json.dumps(dict(response.headers))


def test_a_limited_tenant_gets_its_own_rate_limit_headers(
    meter: Process, admin: Admin, tenant_key: dict[str, Any]
) -> None:
    limits = {"requests_per_minute": 50, "tokens_per_minute": 100_000}
    response = admin.request("PUT", f"/admin/tenants/{tenant_key['tenant_id']}/limits", json=limits)
    assert response.status_code == 200, response.text
    answer = httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=tenant_headers(tenant_key), timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["anthropic-ratelimit-requests-limit"] == "50"
    assert answer.headers["anthropic-ratelimit-tokens-limit"] == "100000"
    # meter's headers only: none of the organization's (the demo sends input/output-token families too).
    assert [name for name in answer.headers if name.startswith("anthropic-ratelimit-input-tokens")] == []
    assert [name for name in answer.headers if name.startswith("anthropic-ratelimit-output-tokens")] == []
    assert "anthropic-organization-id" not in answer.headers


def test_rate_limit_lines_go_into_the_final_head_of_their_own_answer_only(
    meter: Process, admin: Admin, tenant_key: dict[str, Any]
) -> None:
    """meter's server writes the rate-limit lines into the head as they are (server.HEAD_LINES):
    not into an interim 100 Continue, not into the next answer on the connection (another key's),
    and, in a stream, into the head only."""
    limits = {"requests_per_minute": 50, "tokens_per_minute": 100_000}
    response = admin.request("PUT", f"/admin/tenants/{tenant_key['tenant_id']}/limits", json=limits)
    assert response.status_code == 200, response.text
    free = admin.issue_key(admin.create_tenant("free-neighbour")["id"], name="free")

    def kept_alive(key: dict[str, Any], body: bytes = b"", length: int | None = None, **extra: str) -> bytes:
        headers = tenant_headers(key, **{"content-type": "application/json"}, **extra)
        return request_bytes("POST", b"/v1/messages", headers, body, length, keep_alive=True)

    body, streamed = json.dumps(BODY).encode(), json.dumps({**BODY, "stream": True}).encode()
    with Connection(meter.base_url) as connection:
        assert connection.send(kept_alive(tenant_key, length=len(body), expect="100-continue"))
        assert connection.read_head() == (100, {}, [])  # the interim answer: a status line alone
        assert connection.send(body)
        answer = connection.read_answer()
        assert answer.status == 200 and answer.json()["type"] == "message", answer.body
        ours = sorted(name for name, _ in answer.header_lines if name.startswith("anthropic-ratelimit-"))
        parts = ("limit", "remaining", "reset")
        assert ours == [f"anthropic-ratelimit-{family}-{part}" for family in ("requests", "tokens") for part in parts]
        assert answer.headers["anthropic-ratelimit-requests-limit"] == "50"
        assert 0 <= int(answer.headers["anthropic-ratelimit-requests-remaining"]) <= 49
        assert answer.headers["anthropic-ratelimit-tokens-limit"] == "100000"
        assert 99_000 <= int(answer.headers["anthropic-ratelimit-tokens-remaining"]) < 100_000
        # Pipelined: both requests in one write; the second (another key's) answer carries none of them.
        assert connection.send(kept_alive(tenant_key, body) + kept_alive(free, body))
        first, neighbour = connection.read_answer(), connection.read_answer()
        assert first.status == 200 and first.headers["anthropic-ratelimit-requests-limit"] == "50"
        assert neighbour.status == 200 and not [name for name in neighbour.headers if "ratelimit" in name]
        assert connection.send(kept_alive(tenant_key, streamed))
        stream = connection.read_answer()
        assert stream.status == 200 and stream.headers["anthropic-ratelimit-requests-limit"] == "50"
        assert b"anthropic-ratelimit" not in stream.body and b"event: message_stop" in stream.body


def test_what_stays_with_the_tenants_hop_is_not_forwarded(
    meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    kept = {"anthropic-beta": "tools-2024-04-04", "x-custom-thing": "kept", "x-claude-code-session-id": "s-1"}
    dropped = {
        "authorization": f"Bearer {tenant_key['key']}",
        "cookie": "session=tenant",
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-host": "evil.example",
        "x-forwarded-proto": "http",
        "forwarded": "for=203.0.113.9;host=evil.example",
        "x-real-ip": "203.0.113.9",
        "anthropic-workspace-id": "wrkspc_operators_other_workspace",
        "proxy-authorization": "Basic dGVuYW50OnNlY3JldA==",
        "te": "trailers",
        "keep-alive": "timeout=600",
        "x-drop-me": "named in connection",
        "x-drop-me-too": "named in connection",
    }
    response = httpx.post(
        meter.base_url + "/v1/messages",
        json=BODY,
        headers={
            **tenant_headers(tenant_key),
            **kept,
            **dropped,
            "connection": "keep-alive, x-drop-me, X-Drop-Me-Too",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    seen = httpx.get(upstream.base_url + "/_demo/last-request").json()
    assert seen["headers"]["x-api-key"] == OPERATOR_KEY
    assert {name: seen["headers"].get(name) for name in kept} == kept
    assert sorted(set(dropped) & set(seen["headers"])) == []
    assert tenant_key["key"] not in json.dumps(seen)


def test_the_upstreams_cookies_never_reach_another_call(
    database_url: str, hostile_upstream: Process, admin: Admin, tmp_path: Path
) -> None:
    """The upstream sets cookies on every answer; meter's upstream client must not keep them, or
    the next call, whoever's it is, would carry the operator's session to the upstream. (By name,
    not by IP address: a cookie jar keeps no cookies of a bare IP address.)"""
    by_name = hostile_upstream.base_url.replace("127.0.0.1", "localhost")
    process = start_meter(database_url, by_name, tmp_path)
    try:
        first, second = (admin.issue_key(admin.create_tenant(f"cookie-{i}")["id"]) for i in range(2))
        for key in (first, second, first):
            response = httpx.post(process.base_url + "/v1/messages", json=BODY, headers=tenant_headers(key), timeout=30)
            assert response.status_code == 200, response.text
            assert response.headers[SAW_COOKIE] == "none"
    finally:
        process.stop()
