"""What crosses meter untouched, and what never does: keys, headers, bodies, query strings."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.support import OPERATOR_KEY, Admin, Ledger, Process

BODY: Any = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "héllo"}]}


def last_upstream_request(upstream: Process) -> dict[str, Any]:
    seen: dict[str, Any] = httpx.get(upstream.base_url + "/_demo/last-request").json()
    return seen


def test_upstream_gets_operator_key_and_exact_body(
    meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    # Odd spacing and key order: forwarded byte for byte, not re-serialised.
    body = b'{ "messages":[{"role":"user","content":"h\\u00e9llo"}],  "max_tokens":16,"model":"claude-sonnet-4-6"}'
    response = httpx.post(
        meter.base_url + "/v1/messages?beta=true",
        content=body,
        headers={
            "authorization": f"Bearer {tenant_key['key']}",
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "context-1m-2025-08-07,interleaved-thinking-2025-05-14",
            "x-claude-code-session-id": "sess-1",
            "x-custom-thing": "kept",
            "content-type": "application/json",
        },
    )
    assert response.status_code == 200, response.text
    seen = last_upstream_request(upstream)
    assert seen["headers"]["x-api-key"] == OPERATOR_KEY
    assert "authorization" not in seen["headers"]
    assert tenant_key["key"] not in json.dumps(seen)
    assert seen["headers"]["anthropic-beta"] == "context-1m-2025-08-07,interleaved-thinking-2025-05-14"
    assert seen["headers"]["x-claude-code-session-id"] == "sess-1"
    assert seen["headers"]["x-custom-thing"] == "kept"
    assert seen["query"] == "beta=true"
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    # The upstream's own request id reaches the client, beside meter's.
    assert response.headers["request-id"].startswith("req_demo_")
    assert response.headers["x-meter-request-id"].startswith("req_")


def test_sdk_with_x_api_key_is_replaced_too(meter: Process, upstream: Process, tenant_key: dict[str, Any]) -> None:
    with anthropic.Anthropic(base_url=meter.base_url, api_key=tenant_key["key"], max_retries=0) as client:
        client.messages.create(**BODY)
    assert last_upstream_request(upstream)["headers"]["x-api-key"] == OPERATOR_KEY


@pytest.mark.parametrize("key", ["sk-meter-not-a-real-key", "sk-ant-api03-someone-elses", None])
def test_wrong_or_missing_key_is_authentication_error(meter: Process, key: str | None) -> None:
    if key is None:
        response = httpx.post(meter.base_url + "/v1/messages", json=BODY)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        return
    with (
        anthropic.Anthropic(base_url=meter.base_url, api_key=key, max_retries=0) as client,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        client.messages.create(**BODY)
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_revoked_key_is_refused(meter: Process, admin: Admin, tenant_key: dict[str, Any], ledger: Ledger) -> None:
    with anthropic.Anthropic(base_url=meter.base_url, api_key=tenant_key["key"], max_retries=0) as client:
        client.messages.create(**BODY)
        revoked = admin.request("POST", f"/admin/keys/{tenant_key['id']}/revoke")
        assert revoked.status_code == 200
        assert revoked.json()["status"] == "revoked"
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(**BODY)


def test_usage_events_page_by_cursor_without_secrets(
    admin: Admin, tenant_key: dict[str, Any], meter: Process, ledger: Ledger
) -> None:
    with anthropic.Anthropic(base_url=meter.base_url, api_key=tenant_key["key"], max_retries=0) as client:
        made = [client.messages.with_raw_response.create(**BODY).headers["x-meter-request-id"] for _ in range(3)]
    for request_id in made:
        ledger.row(request_id)
    assert tenant_key["key"].startswith("sk-meter-")
    assert tenant_key["prefix"] == tenant_key["key"][: len(tenant_key["prefix"])]
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        params = {"tenant_id": tenant_key["tenant_id"], "limit": 1, **({"after": cursor} if cursor else {})}
        page = admin.request("GET", "/admin/usage/events", params=params).json()
        seen += [event["request_id"] for event in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == made
    assert tenant_key["key"] not in json.dumps(page)


def test_admin_routes_need_the_admin_token(meter: Process, tenant_key: dict[str, Any]) -> None:
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Bearer {tenant_key['key']}"},
        {"x-api-key": tenant_key["key"]},
    ):
        for method, path in (
            ("POST", "/admin/tenants"),
            ("GET", "/admin/usage/events"),
            ("POST", f"/admin/tenants/{tenant_key['tenant_id']}/keys"),
            ("POST", f"/admin/keys/{tenant_key['id']}/revoke"),
        ):
            response = httpx.request(method, meter.base_url + path, headers=headers, json={"name": "x"})
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["type"] == "authentication_error"
