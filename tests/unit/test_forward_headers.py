"""Which headers cross meter, each way: the tenant's credential, its cookies and client-address
headers, and the hop-by-hop headers never reach the upstream; the operator's organization, cookies
and organization-wide rate limits never reach the tenant."""

from __future__ import annotations

from meter.proxy.forward import Upstream, response_headers

# As an ASGI server hands them over: lower-case names, in order, repeats kept.
INCOMING = [
    (b"host", b"meter.example"),
    (b"content-length", b"42"),
    (b"content-type", b"application/json"),
    (b"x-api-key", b"sk-meter-tenant-secret"),
    (b"authorization", b"Bearer sk-meter-tenant-secret"),
    (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"a-1"),
    (b"accept-encoding", b"gzip, br"),
    (b"connection", b"keep-alive"),
    (b"te", b"trailers"),
    (b"anthropic-beta", b"b-2"),
    (b"x-custom", b"kept"),
    (b"cookie", b"session=tenant"),
    (b"x-forwarded-for", b"10.0.0.1"),
    (b"x-forwarded-host", b"evil.example"),
    (b"forwarded", b"for=10.0.0.1"),
    (b"x-real-ip", b"10.0.0.1"),
    (b"anthropic-workspace-id", b"wrkspc_operator_other"),
]
PASSED_ON = [
    (b"content-type", b"application/json"),
    (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"a-1"),
    (b"anthropic-beta", b"b-2"),
    (b"x-custom", b"kept"),
]


def test_the_upstream_gets_the_operators_key_instead_of_the_tenants() -> None:
    forwarded = Upstream("http://upstream.test", "sk-ant-operator").request_headers(INCOMING)
    assert forwarded == [*PASSED_ON, (b"x-api-key", b"sk-ant-operator"), (b"accept-encoding", b"identity")]


def test_without_an_operator_key_no_credential_is_sent() -> None:
    forwarded = Upstream("http://upstream.test", None).request_headers(INCOMING)
    assert forwarded == [*PASSED_ON, (b"accept-encoding", b"identity")]


def test_uncompressed_answers_are_asked_for_even_when_the_client_sent_no_accept_encoding() -> None:
    forwarded = Upstream("http://upstream.test", None).request_headers([(b"anthropic-version", b"2023-06-01")])
    assert forwarded == [(b"anthropic-version", b"2023-06-01"), (b"accept-encoding", b"identity")]


def test_headers_the_connection_header_names_are_not_forwarded() -> None:
    incoming = [(b"connection", b"close, X-Secret-Hop"), (b"x-secret-hop", b"1"), (b"x-kept", b"2")]
    forwarded = Upstream("http://upstream.test", None).request_headers(incoming)
    assert forwarded == [(b"x-kept", b"2"), (b"accept-encoding", b"identity")]


def test_the_answers_framing_hop_by_hop_and_operator_headers_stay_behind_in_any_case() -> None:
    upstream = [
        (b"Content-Type", b"text/event-stream"),
        (b"Content-Length", b"5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"request-id", b"req_1"),
        (b"Anthropic-Ratelimit-Requests-Remaining", b"7"),
        (b"anthropic-ratelimit-tokens-reset", b"2026-12-02T00:00:00Z"),
        (b"anthropic-priority-input-tokens-limit", b"100"),
        (b"anthropic-organization-id", b"org-operator"),
        (b"set-cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"retry-after", b"3"),
    ]
    assert response_headers(upstream) == [
        (b"content-type", b"text/event-stream"),
        (b"request-id", b"req_1"),
        (b"retry-after", b"3"),
    ]


def test_headers_the_upstreams_connection_header_names_stay_behind() -> None:
    upstream = [(b"Connection", b"x-upstream-hop"), (b"X-Upstream-Hop", b"1"), (b"x-ok", b"2")]
    assert response_headers(upstream) == [(b"x-ok", b"2")]
