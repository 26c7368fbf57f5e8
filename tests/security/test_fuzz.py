"""A fuzz run of the tenant endpoints of a real meter (the session's, default settings): hypothesis
writes requests with hostile targets (the traversal fragments of test_paths.py spliced into real
paths, percent-encodings of any byte), headers (credentials right and wrong, the demo upstream's
controls, `Connection` naming other headers, arbitrary names and values) and JSON-ish bodies (valid
requests with hostile values, arbitrary JSON, duplicate keys, deep nesting, bytes that are not
JSON), sent over a raw socket exactly as written. Whatever it writes, meter produces no 5xx of its own,
every error is JSON in the endpoint's dialect, no answer holds a traceback, and meter logs none."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.checks import allowed_upstream_request, anthropic_error, openai_error
from tests.security.wire import Answer, exchange
from tests.support import ADMIN_TOKEN, Process, upstream_requests

EXAMPLES = 400
# Its own peer address: its failed authentications must not throttle the other tests' 127.0.0.1.
SOURCE = f"127.{secrets.randbelow(250) + 2}.{secrets.randbelow(250) + 1}.1"

# The tenant endpoints, each with its method, and a few other paths.
ENDPOINTS = [
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/claude-sonnet-4-6"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/messages/batches"),
    ("GET", "/v1/messages/batches"),
    ("GET", "/v1/messages/batches/msgbatch_01demo"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file_01demo/content"),
]
OTHER_PATHS = ["/v1", "/", "/admin/tenants", "/healthz", "/metrics"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]
FRAGMENTS = [
    "..", ".", "/", "//", "\\", ";", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%252e", "%00",
    "%0a", "%0d%0a", "%20", "%c0%ae", "%ff", "%", "%zz", "#", "?", "&", "=", "~", "@", ":", "*",
]  # fmt: skip
# What HTTP's parser lets through in a target: printable ASCII.
TARGET_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
PERCENT = st.integers(0, 255).flatmap(lambda b: st.sampled_from([f"%{b:02x}", f"%{b:02X}"]))


@st.composite
def requests_lines(draw: st.DrawFn) -> tuple[str, bytes]:
    """A method and a target: mostly an endpoint's own (so the request goes on to its headers and
    body), else an endpoint's path with fragments spliced in, or a path of anything."""
    kind = draw(st.sampled_from(["endpoint", "endpoint", "endpoint", "spliced", "random"]))
    method, path = draw(st.sampled_from(ENDPOINTS))
    if kind != "endpoint" or draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS))
    if kind == "random":
        path = "/" + "".join(draw(st.lists(st.one_of(TARGET_CHARS, PERCENT, st.sampled_from(FRAGMENTS)), max_size=12)))
    elif kind == "spliced":
        path = draw(st.sampled_from([path, *OTHER_PATHS]))
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(1, len(path)))  # after the leading slash: a target starts with one
            path = path[:at] + draw(st.sampled_from(FRAGMENTS)) + path[at:]
    if draw(st.booleans()):
        path += "?" + "".join(draw(st.lists(st.one_of(TARGET_CHARS, PERCENT), max_size=8)))
    return method, path.encode()


HEADER_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).filter(
    lambda name: name not in ("content-length", "transfer-encoding", "host", "upgrade", "connection", "expect")
)
# Header values as HTTP allows them: visible ASCII, spaces inside, and obs-text bytes.
HEADER_VALUES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
).map(str.strip)


@st.composite
def header_lists(draw: st.DrawFn, key: str) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    credential = draw(st.sampled_from(["x-api-key", "x-api-key", "bearer", "made up", "admin", "none", "garbled"]))
    if credential == "x-api-key":
        headers.append(("x-api-key", key))
    elif credential == "bearer":
        headers.append(("authorization", f"Bearer {key}"))
    elif credential == "made up":
        headers.append(("x-api-key", "sk-meter-" + draw(st.text(alphabet="abcdefXYZ0123456789_-", max_size=43))))
    elif credential == "admin":
        headers.append(("authorization", f"Bearer {ADMIN_TOKEN}"))
    elif credential == "garbled":
        headers.append((draw(st.sampled_from(["x-api-key", "authorization"])), draw(HEADER_VALUES)))
    optional = {
        "anthropic-version": st.sampled_from(["2023-06-01", "2023-01-01", "", "x" * 300]),
        "content-type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
        "anthropic-beta": HEADER_VALUES,
        "x-demo-error": st.sampled_from(["429", "529", "500", "midstream", "drop", "bogus"]),
        "x-demo-output-tokens": st.sampled_from(["1", "3", "0", "-5", "many"]),
        "connection": st.sampled_from(["close", "keep-alive, x-api-key", "content-type, anthropic-version", "x-a"]),
        "expect": st.just("100-continue"),
        "accept-encoding": st.sampled_from(["gzip", "br, deflate", "identity"]),
        "origin": st.sampled_from(["https://app.example", "null"]),
        "access-control-request-method": st.sampled_from(["POST", "GET"]),
    }
    for name, values in optional.items():
        if draw(st.integers(0, 4)) == 0:
            headers.append((name, draw(values)))
    headers += draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4))
    return headers


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
HOSTILE_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["", "claude-sonnet-4-6\x00", "c" * 257, "claude\n", "=HYPERLINK(1)", -1, 2**31, 2**63, 1.5]),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kinds = ["request", "request", "request", "batch", "json", "duplicate", "nested", "bytes", "empty"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "empty":
        return b""
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    document: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    fields = st.sampled_from(["model", "max_tokens", "stream", "messages", "system", "x"])
    for field in draw(st.lists(fields, max_size=2)):
        document[field] = draw(HOSTILE_VALUES)
    if kind == "batch":
        custom_id = draw(st.one_of(st.just("r1"), st.text(max_size=70)))
        return json.dumps({"requests": [{"custom_id": custom_id, "params": document}]}).encode()
    text = json.dumps(document, ensure_ascii=draw(st.booleans())).encode()
    if kind == "duplicate":
        key = draw(st.sampled_from([b'"model"', b'"\\u006dodel"', b'"stream"', b'"max_tokens"']))
        text = b"{" + key + b":" + json.dumps(draw(HOSTILE_VALUES)).encode() + b"," + text[1:]
    elif kind == "nested":
        depth = draw(st.integers(95, 3000))
        text = text[:-1] + b',"metadata":' + b"[" * depth + b"]" * depth + b"}"
    return text


def dialect(target: bytes) -> str:
    """The error dialect a target's answer must speak: OpenAI's for the Chat Completions path
    (however its letters are percent-encoded), Anthropic's for everything else."""
    path = target.split(b"?", 1)[0].split(b"#", 1)[0].decode("latin-1")

    def letter(match: re.Match[str]) -> str:
        char = chr(int(match[1], 16))
        return char if char.isascii() and char.isalnum() else match[0]

    return "openai" if re.sub(r"%([0-9A-Fa-f]{2})", letter, path) == "/v1/chat/completions" else "anthropic"


def check(answer: Answer, method: str, target: bytes, upstream: Process, dropped: bool = False) -> None:
    assert b"Traceback" not in answer.body
    if answer.status >= 500:
        # Only a failure the demo upstream produced itself (x-demo-error) may be relayed as one, and
        # meter's own 502 only when the demo was asked to cut the connection (x-demo-error: drop).
        upstream_cut = dropped and answer.status == 502 and b"closed the connection without answering" in answer.body
        from_demo = answer.headers.get("request-id", "").startswith("req_demo_")
        assert from_demo or upstream_cut, (answer.status, answer.body[:300])
        seen_method, seen_path = upstream_requests(upstream)[-1]
        assert allowed_upstream_request(seen_method, seen_path), (seen_method, seen_path)
    if answer.status >= 400:
        check_error = openai_error if dialect(target) == "openai" else anthropic_error
        check_error(answer.status, answer.headers, answer.body)


def test_fuzzed_requests_get_no_5xx_of_meters_own_and_every_error_is_json(
    meter: Process, upstream: Process, tenant_key: dict[str, Any]
) -> None:
    log_start = meter.log_path.stat().st_size
    tried: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(line=requests_lines(), headers=header_lists(tenant_key["key"]), body=bodies())
    def one_request(line: tuple[str, bytes], headers: list[tuple[str, str]], body: bytes) -> None:
        method, target = line
        answer = exchange(meter.base_url, method, target, headers, body, source=SOURCE)
        tried.append(answer.status)
        check(answer, method, target, upstream, dropped=("x-demo-error", "drop") in headers)

    one_request()
    assert len(tried) >= EXAMPLES
    # Not all refused at the door: some were served, some refused for their body, some not routed.
    assert {200, 400, 404} <= set(tried), sorted(set(tried))
    with open(meter.log_path, "rb") as log:
        log.seek(log_start)
        written = log.read().decode(errors="replace")
    assert "Traceback" not in written, written[-3000:]
