"""An upstream that leaks: every answer carries every header a proxy must keep from its tenants
(the organization's id, cookies, organization-wide rate limits and priority-tier limits, hop-by-hop
headers and a header its `Connection` header names), and `x-hostile-reply: sse` makes it answer with
an event stream whatever the request asked for. Run as its own process:

    python -m tests.security.hostile_upstream --port PORT
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

MODEL = "claude-sonnet-4-6"
INPUT_TOKENS = 7
OUTPUT_TOKENS = 5
# Must reach the tenant: proves the headers are relayed at all.
KEPT = ("x-hostile-kept", "relayed")
# Must never reach a tenant.
LEAKS: list[tuple[str, str]] = [
    ("anthropic-organization-id", "org-hostile-operator"),
    ("set-cookie", "session=operator-secret; Path=/; HttpOnly"),
    ("set-cookie", "_cfuvid=operator; Path=/"),
    ("anthropic-ratelimit-requests-limit", "4000"),
    ("anthropic-ratelimit-requests-remaining", "3999"),
    ("anthropic-ratelimit-tokens-limit", "2000000"),
    ("anthropic-ratelimit-unified-status", "allowed"),
    ("anthropic-priority-input-tokens-limit", "100000"),
    ("anthropic-priority-output-tokens-reset", "2030-01-01T00:00:00Z"),
    ("proxy-authenticate", 'Basic realm="operator"'),
    ("keep-alive", "timeout=5"),
    ("connection", "keep-alive, x-hostile-hop"),
    ("x-hostile-hop", "named-in-connection"),
]
LEAKED_NAMES = frozenset(name for name, _ in LEAKS)
SAW_COOKIE = "x-hostile-saw-cookie"


def _headers(content_type: str, request: web.Request | None = None) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict([("content-type", content_type), ("request-id", "req_hostile_1"), KEPT])
    headers.extend(LEAKS)
    # What the caller sent as cookies: a proxy that kept the cookies set above would send them back.
    headers[SAW_COOKIE] = request.headers.get("cookie", "none") if request is not None else "none"
    return headers


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _usage(output_tokens: int) -> dict[str, int]:
    return {"input_tokens": INPUT_TOKENS, "output_tokens": output_tokens}


def message() -> dict[str, Any]:
    return {
        "id": "msg_hostile",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _usage(OUTPUT_TOKENS),
    }


def events() -> bytes:
    start = {**message(), "content": [], "stop_reason": None, "usage": _usage(1)}
    return b"".join(
        (
            _frame("message_start", {"type": "message_start", "message": start}),
            _frame(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            _frame(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}},
            ),
            _frame("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _frame(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": _usage(OUTPUT_TOKENS),
                },
            ),
            _frame("message_stop", {"type": "message_stop"}),
        )
    )


async def answer(request: web.Request) -> web.StreamResponse:
    await request.read()
    reply = request.headers.get("x-hostile-reply", "json")
    if reply == "sse":
        response = web.StreamResponse(headers=_headers("text/event-stream; charset=utf-8", request))
        await response.prepare(request)
        await response.write(events())
        await response.write_eof()
        return response
    if reply == "error":
        body = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down (hostile)."}}
        headers = _headers("application/json", request)
        headers["retry-after"] = "9"
        return web.Response(status=429, body=json.dumps(body).encode(), headers=headers)
    if request.path == "/v1/messages/count_tokens":
        payload: dict[str, Any] = {"input_tokens": INPUT_TOKENS}
    elif request.path.startswith("/v1/models"):
        payload = {"data": [], "has_more": False, "first_id": None, "last_id": None}
    else:
        payload = message()
    return web.Response(body=json.dumps(payload).encode(), headers=_headers("application/json", request))


async def ready(_: web.Request) -> web.Response:
    return web.Response(text="ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_route("*", "/v1/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
