"""The server's own defences, against a guarded meter (tests/security/conftest.py: 2 s deadlines for
headers and between body chunks, 3 requests in flight, 2 per tenant, 1 drain per tenant) and one with
a small connection cap: a client that drips its headers or stalls its body, header floods, bodies
over the cap (declared, sent anyway, or chunked without end), and the admission bounds."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.security.checks import UpstreamWatch, anthropic_error, openai_error
from tests.security.conftest import MAX_CONNECTIONS
from tests.security.wire import Connection, HeldUpload, exchange, request_bytes
from tests.support import Admin, Ledger, Process, eventually, metric

BODY: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
CAP = 32 * 1024 * 1024  # METER_MAX_BODY_BYTES's default
HEADER_CAP = 64 * 1024  # METER_MAX_HEADER_BYTES's default


def headers(key: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"x-api-key": key["key"], "anthropic-version": "2023-06-01", "content-type": "application/json", **extra}


def new_key(admin: Admin) -> dict[str, Any]:
    return admin.issue_key(admin.create_tenant("security-tenant")["id"])


def answered_while_sending(connection: Connection, pieces: Any, limit: int) -> int:
    """Send `pieces` until the server answers (or stops reading); fail if it has not by `limit`
    bytes. Returns the bytes sent."""
    sent = 0
    for piece in pieces:
        assert sent <= limit, f"sent {sent} bytes and meter has not answered"
        if connection.readable() or not connection.send(piece):
            break
        sent += len(piece)
    eventually(lambda: connection.readable(0.1), 10, "an answer")
    return sent


# Headers


def drip_until_cut_off(connection: Connection) -> None:
    """Send header lines a few at a time until meter answers: a 408 in Anthropic's format, closed."""

    def drip() -> bool:
        return connection.readable(0.2) or not connection.send(b"\r\nx-drip: a")

    eventually(drip, 30, "meter to give up on the dripping client")
    answer = connection.read_answer()
    assert answer.status == 408
    anthropic_error(answer.status, answer.headers, answer.body, "invalid_request_error")
    assert answer.closed


def test_a_client_that_drips_its_headers_is_cut_off(
    guarded: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    with Connection(guarded.base_url) as slow:
        slow.send(b"POST /v1/messages HTTP/1.1\r\nhost: meter.test\r\nx-api-key: " + tenant_key["key"].encode())
        # Others are served while it drips.
        assert httpx.post(guarded.base_url + "/v1/messages", json=BODY, headers=headers(tenant_key)).status_code == 200
        drip_until_cut_off(slow)
    assert watch.new() == [("POST", "/v1/messages")]  # the other client's request only


def test_a_kept_alive_connection_that_drips_its_next_request_s_headers_is_cut_off(
    guarded: Process, tenant_key: dict[str, Any]
) -> None:
    """The deadline starts with each request's headers, not only with the connection's first."""
    body = json.dumps(BODY).encode()
    first = [f"{name}: {value}".encode() for name, value in headers(tenant_key).items()]
    with Connection(guarded.base_url) as client:
        head = b"\r\n".join([b"POST /v1/messages HTTP/1.1", b"host: meter.test", *first])
        client.send(head + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert client.read_answer().status == 200
        client.send(b"POST /v1/messages HTTP/1.1\r\nhost: meter.test")
        drip_until_cut_off(client)


def test_a_connection_that_never_sends_a_request_is_closed(guarded: Process) -> None:
    with Connection(guarded.base_url) as idle:
        eventually(lambda: idle.readable(0.2), 30, "meter to give up on the idle connection")
        answer = idle.read_answer()
    assert answer.status == 408
    assert answer.closed


@pytest.mark.parametrize("shape", ["many headers", "one huge header"])
def test_a_header_flood_is_431_and_closed(shape: str, guarded: Process, upstream: Process) -> None:
    watch = UpstreamWatch(upstream)
    if shape == "many headers":
        pieces = (b"x-flood-%d: %s\r\n" % (i, b"a" * 64) for i in range(100_000))
    else:
        pieces = (b"x-huge: " if i == 0 else b"a" * 4096 for i in range(100_000))
    with Connection(guarded.base_url) as flood:
        flood.send(b"GET /v1/models HTTP/1.1\r\nhost: meter.test\r\n")
        answered_while_sending(flood, pieces, 4 * HEADER_CAP)
        answer = flood.read_answer()
    assert answer.status == 431
    anthropic_error(answer.status, answer.headers, answer.body, "request_too_large")
    assert answer.closed
    assert watch.new() == []


def test_headers_under_the_cap_are_served(guarded: Process, upstream: Process, tenant_key: dict[str, Any]) -> None:
    """The control of the flood: 56 KiB of headers, arriving in pieces, are a request like any other."""
    watch = UpstreamWatch(upstream)
    with Connection(guarded.base_url) as client:
        client.send(request_bytes("GET", b"/v1/models", headers(tenant_key))[:-2])
        for i in range(56):
            client.send(b"x-padding-%02d: %s\r\n" % (i, b"p" * 1000))
        client.send(b"\r\n")
        answer = client.read_answer()
    assert answer.status == 200, answer.body[:300]
    assert watch.new() == [("GET", "/v1/models")]


def test_headers_over_the_cap_are_431_however_they_arrive(guarded: Process, tenant_key: dict[str, Any]) -> None:
    with Connection(guarded.base_url) as client:
        client.send(request_bytes("GET", b"/v1/models", headers(tenant_key))[:-2])
        for i in range(60):  # 60 KB, not yet over the cap
            client.send(b"x-padding-%02d: %s\r\n" % (i, b"p" * 1000))
        assert not client.readable(0.3)  # under the cap so far
        client.send(b"x-last: " + b"l" * 20_000 + b"\r\n\r\n")  # 80 KB in all
        answer = client.read_answer()
    assert answer.status == 431
    anthropic_error(answer.status, answer.headers, answer.body, "request_too_large")
    assert answer.closed


# Bodies


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    path: str, guarded: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    with Connection(guarded.base_url) as client:
        # Only the headers: a server that waited for the body would answer 408 (or never).
        client.send(request_bytes("POST", path.encode(), headers(tenant_key), length=CAP + 1))
        answer = client.read_answer()
    assert answer.status == 413
    if path == "/v1/chat/completions":
        openai_error(answer.status, answer.headers, answer.body)
        assert answer.json()["error"]["code"] == "request_too_large"
    else:
        anthropic_error(answer.status, answer.headers, answer.body, "request_too_large")
    assert watch.new() == []


def test_a_body_declared_past_what_meter_discards_gets_413_and_the_connection_closed(
    guarded: Process, tenant_key: dict[str, Any]
) -> None:
    with Connection(guarded.base_url) as client:
        client.send(request_bytes("POST", b"/v1/messages", headers(tenant_key), length=600 * 1024 * 1024))
        answer = client.read_answer()
        assert answer.status == 413
        assert client.closed_by_server()


def test_a_client_that_sends_its_oversized_body_before_reading_gets_the_413(
    guarded: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    body = b" " * (CAP + 1)
    response = httpx.post(guarded.base_url + "/v1/messages", content=body, headers=headers(tenant_key), timeout=60)
    assert response.status_code == 413
    anthropic_error(response.status_code, response.headers, response.content, "request_too_large")
    assert watch.new() == []


def test_a_chunked_body_is_cut_off_once_it_passes_the_cap(
    guarded: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    piece = 256 * 1024
    chunk = b"%x\r\n" % piece + b" " * piece + b"\r\n"
    head = request_bytes("POST", b"/v1/messages", [*headers(tenant_key).items(), ("transfer-encoding", "chunked")])
    with Connection(guarded.base_url) as client:
        client.send(head)
        sent = answered_while_sending(client, (chunk for _ in range(1000)), 2 * CAP)
        answer = client.read_answer()
        assert answer.status == 413
        anthropic_error(answer.status, answer.headers, answer.body, "request_too_large")
        assert client.closed_by_server()
    assert sent > CAP  # meter read up to the cap before refusing: it counts, it does not guess
    assert watch.new() == []


def test_a_chunked_body_under_the_cap_is_forwarded(
    guarded: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    watch = UpstreamWatch(upstream)
    body = json.dumps(BODY).encode()
    chunked = b"".join(b"%x\r\n" % len(part) + part + b"\r\n" for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    head = request_bytes("POST", b"/v1/messages", [*headers(tenant_key).items(), ("transfer-encoding", "chunked")])
    with Connection(guarded.base_url) as client:
        client.send(head + chunked)
        answer = client.read_answer()
    assert answer.status == 200, answer.body[:300]
    assert watch.new() == [("POST", "/v1/messages")]


def test_a_body_that_stalls_is_408(guarded: Process, upstream: Process, tenant_key: dict[str, Any]) -> None:
    watch = UpstreamWatch(upstream)
    body = json.dumps(BODY).encode()
    with Connection(guarded.base_url) as client:
        client.send(request_bytes("POST", b"/v1/messages", headers(tenant_key), length=len(body)) + body[:20])
        eventually(lambda: client.readable(0.2), 30, "meter to give up on the stalled body")
        answer = client.read_answer()
    assert answer.status == 408
    anthropic_error(answer.status, answer.headers, answer.body, "invalid_request_error")
    assert watch.new() == []


# Admission


def in_flight(process: Process, count: int) -> bool:
    return metric(process.base_url, "meter_in_flight_requests") == count


def test_a_tenant_may_hold_only_so_many_requests_in_flight(
    guarded: Process, admin: Admin, tenant_key: dict[str, Any]
) -> None:
    other = new_key(admin)
    rejections = metric(guarded.base_url, "meter_limit_rejections_total", reason="tenant_in_flight")
    # Two uploads that never finish: the slots are taken before the body is read.
    held = [HeldUpload(guarded.base_url, b"/v1/messages", headers(tenant_key)) for _ in range(2)]
    try:
        eventually(lambda: in_flight(guarded, 2), 10, "both uploads in flight")
        refused = httpx.post(guarded.base_url + "/v1/messages", json=BODY, headers=headers(tenant_key))
        assert refused.status_code == 429
        anthropic_error(refused.status_code, refused.headers, refused.content, "rate_limit_error")
        assert refused.headers["retry-after"] == "1"
        # Another tenant of the same process is not held up.
        assert httpx.post(guarded.base_url + "/v1/messages", json=BODY, headers=headers(other)).status_code == 200
        assert not any(upload.answered() for upload in held)
    finally:
        for upload in held:
            upload.release()
    assert metric(guarded.base_url, "meter_limit_rejections_total", reason="tenant_in_flight") == rejections + 1
    eventually(lambda: in_flight(guarded, 0), 10, "the uploads to end")
    assert httpx.post(guarded.base_url + "/v1/messages", json=BODY, headers=headers(tenant_key)).status_code == 200


def test_past_the_process_in_flight_bound_requests_are_shed_with_529(
    guarded: Process, admin: Admin, tenant_key: dict[str, Any]
) -> None:
    second, third = new_key(admin), new_key(admin)
    shed = metric(guarded.base_url, "meter_shed_requests_total")
    held = [HeldUpload(guarded.base_url, b"/v1/messages", headers(key)) for key in (tenant_key, tenant_key, second)]
    try:
        eventually(lambda: in_flight(guarded, 3), 10, "three uploads in flight")
        for extra in (headers(third), {"x-api-key": "sk-meter-not-a-key"}):
            refused = httpx.post(guarded.base_url + "/v1/messages", json=BODY, headers=extra)
            # Before any work, even the key lookup: an unknown key is shed, not refused.
            assert refused.status_code == 529, refused.text
            anthropic_error(refused.status_code, refused.headers, refused.content, "overloaded_error")
            assert refused.headers["retry-after"] == "1"
    finally:
        for upload in held:
            upload.release()
    assert metric(guarded.base_url, "meter_shed_requests_total") == shed + 2
    eventually(lambda: in_flight(guarded, 0), 10, "the uploads to end")
    assert httpx.post(guarded.base_url + "/v1/messages", json=BODY, headers=headers(third)).status_code == 200


def test_a_tenant_may_drain_only_so_many_abandoned_streams(guarded: Process, admin: Admin, ledger: Ledger) -> None:
    """Two slow streams whose clients leave at once: one is read on to its end for its usage, the
    other (past the tenant's one drain) is cut off there and recorded as partial."""
    key = new_key(admin)
    slow = headers(key, **{"x-demo-output-tokens": "40", "x-demo-tokens-per-second": "20"})
    body = json.dumps({**BODY, "max_tokens": 100, "stream": True}).encode()
    clients = [Connection(guarded.base_url) for _ in range(2)]
    request_ids = []
    for client in clients:
        client.send(request_bytes("POST", b"/v1/messages", slow, body))
    for client in clients:
        status, head, _ = client.read_head()
        assert status == 200
        request_ids.append(head["x-meter-request-id"])
    for client in clients:
        client.close()
    rows = [ledger.row(request_id, timeout_s=30) for request_id in request_ids]
    outcomes = sorted((row["partial"], row["output_tokens"] == 40) for row in rows)
    assert outcomes == [(False, True), (True, False)], [
        (r["partial"], r["output_tokens"], r["error_type"]) for r in rows
    ]


def test_past_the_connection_cap_meter_answers_503(exposed: Process, tenant_key: dict[str, Any]) -> None:
    idle = [Connection(exposed.base_url) for _ in range(MAX_CONNECTIONS)]
    try:
        answer = exchange(exposed.base_url, "GET", b"/v1/models", headers(tenant_key))
        assert answer.status == 503
        anthropic_error(answer.status, answer.headers, answer.body)
        assert answer.closed
    finally:
        for connection in idle:
            connection.close()

    def served() -> bool:
        return exchange(exposed.base_url, "GET", b"/v1/models", headers(tenant_key)).status == 200

    eventually(served, 10, "meter to serve again once the connections closed")


def test_as_many_connections_as_the_cap_are_served(exposed: Process, tenant_key: dict[str, Any]) -> None:
    """The control of the cap: with one connection fewer open, the request is served."""
    idle = [Connection(exposed.base_url) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        answer = exchange(exposed.base_url, "GET", b"/v1/models", headers(tenant_key))
    finally:
        for connection in idle:
            connection.close()
    assert answer.status == 200
