"""Errors of the OpenAI-compatible endpoint, rendered in OpenAI's shape.

    OpenAIRequestError      a request meter cannot translate (400 invalid_request_error)
    UpstreamFormatError     an Anthropic 200 reply that is not a Messages response (render as 502)

The openai SDK picks its exception class from the HTTP status alone and keeps the body's `error`
object as `err.body`, so the route must relay the upstream status; `type` and `code` here only
have to read the way OpenAI's own errors do.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meter.errors import ERROR_TYPES


class OpenAIRequestError(Exception):
    """The request cannot be served: malformed, wrongly typed, or asks for something Claude lacks."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> bytes:
        return openai_error_body(self.message, self.type, self.code, self.param)


class UpstreamFormatError(ValueError):
    """Anthropic answered 200 with something that is not a Messages response."""


def openai_error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}`, the body of every OpenAI error."""
    return msgspec.json.encode(openai_error(message, type, code, param))


def openai_error(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Anthropic error.type -> OpenAI (type, code). OpenAI has no code for most of these; where it has
# none the Anthropic type is kept as the code, so a client can still tell an overload from a bug.
_BY_ANTHROPIC_TYPE: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "permission_error": ("permission_error", None),
    "not_found_error": ("not_found_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "timeout_error": ("server_error", "timeout"),
    "overloaded_error": ("server_error", "overloaded"),
}


def openai_error_kind(anthropic_type: str | None, status: int | None) -> tuple[str, str | None]:
    """OpenAI (type, code) for an Anthropic error type, falling back to the HTTP status (bodies
    without a known Anthropic type: non-JSON, a load balancer's HTML page, a new type)."""
    if anthropic_type in _BY_ANTHROPIC_TYPE:
        return _BY_ANTHROPIC_TYPE[anthropic_type]
    if status is not None and status in ERROR_TYPES:
        return _BY_ANTHROPIC_TYPE[ERROR_TYPES[status]]
    if status is not None and 400 <= status < 500:
        return "invalid_request_error", anthropic_type
    return "server_error", anthropic_type


def convert_anthropic_error(payload: Any, status: int | None) -> dict[str, Any]:
    """OpenAI error object for a decoded Anthropic error payload (JSON body or SSE `error` event)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {}
    anthropic_type = error.get("type") if isinstance(error.get("type"), str) else None
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"Upstream error ({anthropic_type or f'HTTP {status}'})"
    type_, code = openai_error_kind(anthropic_type, status)
    return openai_error(message, type_, code)


def anthropic_error_to_openai(status: int, anthropic_body: bytes) -> bytes:
    """Re-render an Anthropic error response body in OpenAI's shape; never raises."""
    try:
        payload = msgspec.json.decode(anthropic_body)
    except msgspec.DecodeError:
        payload = None
    converted = convert_anthropic_error(payload, status)
    if not isinstance(payload, dict):
        # Not Anthropic's JSON (a proxy's HTML page, plain text): keep a short excerpt to debug with.
        excerpt = anthropic_body[:200].decode("utf-8", "replace").strip()
        converted["error"]["message"] = f"Upstream returned HTTP {status}" + (f": {excerpt}" if excerpt else "")
    return msgspec.json.encode(converted)
