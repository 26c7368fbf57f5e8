"""CORS: off unless the operator lists origins. A listed origin's preflight is answered without a key
(browsers send none) and never forwarded; its real requests are marked readable by it. Any other
origin, a look-alike of a listed one included, gets no CORS header at all."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.security.checks import UpstreamWatch
from tests.security.conftest import CORS_ORIGIN
from tests.security.wire import exchange
from tests.support import Process, metric

BODY: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
OTHER_ORIGINS = ["https://evil.example", "https://app.example.evil.example", "http://app.example", "null", "*"]


def preflight(meter: Process, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return httpx.options(
        meter.base_url + path,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "x-api-key, anthropic-version, content-type",
        },
    )


def cors_headers(response: httpx.Response) -> list[str]:
    return [name for name in response.headers if name.startswith("access-control-")]


def test_a_listed_origins_preflight_is_answered_without_a_key(guarded: Process, upstream: Process) -> None:
    watch = UpstreamWatch(upstream)
    failures = metric(guarded.base_url, "meter_auth_failures_total")
    for path, methods in (("/v1/messages", "POST"), ("/v1/models/claude-sonnet-4-6", "GET")):
        response = preflight(guarded, path, CORS_ORIGIN, methods)
        assert response.status_code == 204, response.text
        assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
        assert response.headers["access-control-allow-methods"] == methods
        assert response.headers["access-control-allow-headers"] == "x-api-key, anthropic-version, content-type"
        assert "origin" in response.headers["vary"].lower()
    assert watch.new() == []
    assert metric(guarded.base_url, "meter_auth_failures_total") == failures


def test_a_listed_origins_requests_are_readable_by_it(guarded: Process, tenant_key: dict[str, Any]) -> None:
    headers = {"x-api-key": tenant_key["key"], "anthropic-version": "2023-06-01", "origin": CORS_ORIGIN}
    response = httpx.post(guarded.base_url + "/v1/messages", json=BODY, headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "x-meter-request-id" in response.headers["access-control-expose-headers"]
    # Its refusals too, so the browser app can read why.
    refused = httpx.post(guarded.base_url + "/v1/messages", content=b"[]", headers=headers, timeout=30)
    assert refused.status_code == 400
    assert refused.headers["access-control-allow-origin"] == CORS_ORIGIN


@pytest.mark.parametrize("origin", OTHER_ORIGINS)
def test_other_origins_get_no_cors_headers(
    origin: str, guarded: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    response = preflight(guarded, "/v1/messages", origin)
    assert response.status_code != 204
    assert cors_headers(response) == []
    headers = {"x-api-key": tenant_key["key"], "anthropic-version": "2023-06-01", "origin": origin}
    answer = httpx.post(guarded.base_url + "/v1/messages", json=BODY, headers=headers, timeout=30)
    assert answer.status_code == 200
    assert cors_headers(answer) == []
    assert watch.new() == [("POST", "/v1/messages")]  # the real request only, never the preflight


def test_a_preflight_for_a_path_meter_refuses_gets_no_cors_headers(guarded: Process, upstream: Process) -> None:
    watch = UpstreamWatch(upstream)
    for target in (b"/v1/../admin/tenants", b"/v1/%2e%2e/admin/tenants", b"/admin/tenants", b"/v1/skills"):
        answer = exchange(
            guarded.base_url,
            "OPTIONS",
            target,
            {"origin": CORS_ORIGIN, "access-control-request-method": "POST"},
        )
        assert 400 <= answer.status < 500, (target, answer.status)
        assert [name for name in answer.headers if name.startswith("access-control-")] == [], target
    assert watch.new() == []


def test_cors_is_off_by_default(meter: Process, tenant_key: dict[str, Any]) -> None:
    response = preflight(meter, "/v1/messages", CORS_ORIGIN)
    assert response.status_code != 204
    assert cors_headers(response) == []
    headers = {"x-api-key": tenant_key["key"], "anthropic-version": "2023-06-01", "origin": CORS_ORIGIN}
    answer = httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers, timeout=30)
    assert answer.status_code == 200
    assert cors_headers(answer) == []
