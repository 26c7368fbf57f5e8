"""The demo upstream's HTTP answers: JSON with the headers every Anthropic answer carries, and errors
in Anthropic's error shape."""

from __future__ import annotations

from aiohttp import web

from meter.upstream_demo import wire
from meter.upstream_demo.errors import DemoError


def json_response(
    payload: bytes, request_id: str, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    all_headers = {"request-id": request_id, **wire.organization_headers()}
    if headers:
        all_headers.update(headers)
    return web.Response(status=status, body=payload, content_type=wire.JSON_CONTENT_TYPE, headers=all_headers)


def error_response(error: DemoError, request_id: str) -> web.Response:
    body = wire.error_body(error.error_type, error.message, request_id)
    return json_response(body, request_id, error.status, error.headers)
