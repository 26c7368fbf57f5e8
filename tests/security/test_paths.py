"""Routing under attack: request targets written to reach somewhere else (dot segments raw, encoded,
double-encoded, in mixed case; NUL; empty segments; backslashes; control characters) are meter's own
404 for every method, and the demo upstream sees nothing but the endpoint table's paths, written as
meter normalised them. Every request goes over a raw socket, so each target arrives as written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.security.checks import UpstreamWatch, allowed_upstream_request, anthropic_error, openai_error
from tests.security.wire import exchange
from tests.support import ADMIN_TOKEN, Process

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
BODY = json.dumps(
    {"name": "traversal", "model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
).encode()

CORPUS: dict[str, list[bytes]] = {
    "raw": [
        b"/v1/../admin/tenants",
        b"/v1/messages/../models",
        b"/v1/./messages",
        b"/v1/messages/.",
        b"/v1/messages/..",
        b"/v1/models/..",
        b"/../v1/messages",
        b"/admin/../v1/messages",
        b"/v1/models/claude/../../../admin/tenants",
        b"/healthz/../admin/tenants",
        b"/v1/models;/../../admin/tenants",
    ],
    "encoded": [
        b"/v1/%2e%2e/admin/tenants",
        b"/v1/messages/%2e%2e/models",
        b"/v1/%2e/messages",
        b"/v1/models/%2e%2e%2fadmin",
        b"/v1/models/..%2fadmin",
        b"/v1%2fmessages",
        b"/v1/messages%2fcount_tokens",
        b"/v1/models/a%5c..%5cadmin",
        b"/v1/models/%5c",
        b"/%2e%2e/admin/tenants",
        b"/admin/tenants/%2e%2e",
        b"/admin%2ftenants",
    ],
    "double-encoded": [
        b"/v1/%252e%252e/admin/tenants",
        b"/v1/models/%252e%252e%252fadmin",
        b"/v1/messages%252fcount_tokens",
        b"/v1/models/%25",
        b"/v1/models/%25%32%65%25%32%65",
        b"/%252e%252e/admin/tenants",
    ],
    "mixed case": [
        b"/v1/%2E%2e/admin/tenants",
        b"/v1/models/%2E%2E%2Fadmin",
        b"/v1/models/..%2F",
        b"/v1/models/%5C..%5Cadmin",
        b"/V1/messages",
        b"/v1/MESSAGES",
        b"/v1/Models",
        b"/v1/messages/COUNT_TOKENS",
    ],
    "NUL": [
        b"/v1/messages%00",
        b"/v1/models/claude-sonnet-4-6%00.json",
        b"/v1/%00/messages",
        b"/v1/models/%00",
        b"/admin/tenants%00",
    ],
    "empty segments": [
        b"//v1/messages",
        b"/v1//messages",
        b"/v1/messages/",
        b"/v1/messages//",
        b"/v1/models//claude-sonnet-4-6",
        b"/v1/models/",
        b"///admin/tenants",
        b"//admin/tenants",
        b"/v1/",
    ],
    "backslash and control": [
        b"/v1\\..\\admin\\tenants",
        b"/v1/models/a\\b",
        b"/v1/models/%0a",
        b"/v1/models/a%0d%0aX-Injected:%201",
        b"/v1/models/%09claude",
        b"/v1/models/%7f",
        b"/v1/models/%1b",
    ],
    "overlong UTF-8 dots": [
        b"/v1/models/%c0%ae%c0%ae",
        b"/v1/%c0%ae%c0%ae/admin/tenants",
        b"/v1/models/%e0%80%ae",
    ],
    "not a path": [b"*"],
}


def hostile_headers(tenant_key: dict[str, Any]) -> dict[str, str]:
    # Both credentials: a target that reached the admin API or the gateway would be served.
    return {
        "x-api-key": tenant_key["key"],
        "authorization": f"Bearer {ADMIN_TOKEN}",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_traversal_corpus_is_meters_404_and_never_reaches_the_upstream(
    kind: str, meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    for target in CORPUS[kind]:
        for method in METHODS:
            answer = exchange(meter.base_url, method, target, hostile_headers(tenant_key), BODY)
            assert answer.status == 404, (method, target, answer.status, answer.body[:200])
            anthropic_error(answer.status, answer.headers, answer.body, "not_found_error")
            # meter's own answer, not the upstream's relayed 404.
            assert answer.headers["request-id"] == answer.headers["x-meter-request-id"], (method, target)
    assert watch.new() == []


UNKNOWN_V1 = [
    b"/v1/complete",
    b"/v1/skills",
    b"/v1/containers",
    b"/v1/admin/keys",
    b"/v1/organizations/api_keys",
    b"/v1/organizations/usage_report/messages/extra",
    b"/v1/files/file_01/content/extra",
    b"/v1/messages/batches/msgbatch_01/results/extra",
    b"/v1/messages/count_tokens/extra",
    b"/v1/models/claude-sonnet-4-6/extra",
    b"/v1",
    b"/v1/models/-leading-dash",
    b"/v1/models/" + b"a" * 257,
    b"/v1/models/a%20b",
    b"/v1/models/a,b",
    b"/v1/models/%C3%A9",
]


def test_unknown_v1_paths_are_meters_404(meter: Process, upstream: Process, tenant_key: dict[str, Any]) -> None:
    watch = UpstreamWatch(upstream)
    for target in UNKNOWN_V1:
        for method in ("GET", "POST"):
            answer = exchange(meter.base_url, method, target, hostile_headers(tenant_key), BODY)
            assert answer.status == 404, (method, target, answer.status)
            anthropic_error(answer.status, answer.headers, answer.body, "not_found_error")
            assert answer.headers["request-id"] == answer.headers["x-meter-request-id"]
    assert watch.new() == []


def test_wrong_method_is_refused_in_the_endpoints_dialect(
    meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    headers = hostile_headers(tenant_key)
    for target in (b"/v1/messages", b"/v1/messages/count_tokens"):
        answer = exchange(meter.base_url, "GET", target, headers)
        assert (answer.status, answer.headers["allow"]) == (405, "POST")
        anthropic_error(answer.status, answer.headers, answer.body, "invalid_request_error")
    answer = exchange(meter.base_url, "DELETE", b"/v1/models", headers)
    assert (answer.status, answer.headers["allow"]) == (405, "GET")
    answer = exchange(meter.base_url, "GET", b"/v1/chat/completions", headers)
    assert answer.status == 405
    openai_error(answer.status, answer.headers, answer.body, "invalid_request_error")
    assert watch.new() == []


def test_what_is_forwarded_is_meters_normalised_path(
    meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    """The control of the corpus above: the same client and headers do reach the upstream when the
    target is an endpoint's, and what arrives is meter's spelling of it, not the client's."""
    headers = hostile_headers(tenant_key)
    sent = [
        ("GET", b"/v1/models/cl%61ude-sonnet-4-6", "/v1/models/claude-sonnet-4-6"),
        ("GET", b"/v1/m%6Fdels", "/v1/models"),
        ("GET", b"http://evil.example/v1/models", "/v1/models"),
        ("GET", b"/v1/models?after_id=../../admin", "/v1/models?after_id=../../admin"),
        ("POST", b"/v1/messages/c%6funt_tokens", "/v1/messages/count_tokens"),
    ]
    for method, target, forwarded in sent:
        watch = UpstreamWatch(upstream)
        answer = exchange(meter.base_url, method, target, headers, BODY if method == "POST" else b"")
        assert answer.headers["request-id"].startswith("req_demo_"), (target, answer.body[:300])  # the upstream's
        assert watch.new() == [(method, forwarded)]
        assert allowed_upstream_request(method, forwarded)


# Targets the HTTP parser itself refuses: raw control bytes, bytes above 0x7f, a space, no leading slash.
UNPARSEABLE = [
    b"/v1/models/a\x00b",
    b"/v1/models/a\tb",
    b"/v1/models/\x7f",
    b"/v1/models/\xff",
    b"/v1/models/\x1b",
    b"/v1/models/a b",
    b"v1/messages",
]


def test_raw_control_bytes_in_the_target_are_refused_before_routing(
    meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    for target in UNPARSEABLE:
        answer = exchange(meter.base_url, "GET", target, hostile_headers(tenant_key))
        assert answer.status == 400, (target, answer.status)
        assert answer.closed
    assert watch.new() == []


def test_raw_control_bytes_in_the_target_get_an_anthropic_error(meter: Process, tenant_key: dict[str, Any]) -> None:
    answer = exchange(meter.base_url, "GET", b"/v1/models/a\x00b", hostile_headers(tenant_key))
    anthropic_error(answer.status, answer.headers, answer.body, "invalid_request_error")
