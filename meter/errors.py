"""One error tree for everything meter itself refuses, rendered in Anthropic's error format.

    MeterError                      status  Anthropic error.type
    ├── InvalidRequest              400     invalid_request_error
    ├── AuthenticationFailed        401     authentication_error
    ├── PermissionDenied            403     permission_error
    ├── NotFound                    404     not_found_error
    ├── MethodNotAllowed            405     invalid_request_error
    ├── RequestTooLarge             413     request_too_large
    ├── RateLimited                 429     rate_limit_error
    ├── InternalError               500     api_error
    ├── UpstreamUnavailable         502     api_error
    ├── UpstreamTimeout             504     timeout_error
    └── Overloaded                  529     overloaded_error

Upstream errors are never turned into these: they are relayed unmodified.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class MeterError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def response_headers(self, request_id: str) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", b"application/json"),
            (b"request-id", request_id.encode()),
            (b"x-meter-request-id", request_id.encode()),
        ]
        headers.extend((name.encode(), value.encode()) for name, value in self.headers.items())
        return headers

    def body(self, request_id: str | None = None) -> bytes:
        payload: dict[str, object] = {
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
        }
        if request_id:
            payload["request_id"] = request_id
        return json.dumps(payload).encode()


class InvalidRequest(MeterError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(MeterError):
    status = 401
    error_type = "authentication_error"


class PermissionDenied(MeterError):
    status = 403
    error_type = "permission_error"


class NotFound(MeterError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowed(MeterError):
    status = 405
    error_type = "invalid_request_error"


class RequestTooLarge(MeterError):
    status = 413
    error_type = "request_too_large"


class RateLimited(MeterError):
    status = 429
    error_type = "rate_limit_error"


class InternalError(MeterError):
    status = 500
    error_type = "api_error"


class UpstreamUnavailable(MeterError):
    status = 502
    error_type = "api_error"


class UpstreamTimeout(MeterError):
    status = 504
    error_type = "timeout_error"


class Overloaded(MeterError):
    status = 529
    error_type = "overloaded_error"


async def send_error(send: Any, error: MeterError, request_id: str, body: bytes | None = None) -> None:
    """Write `error` as a complete ASGI response (the proxy path renders errors itself); `body`
    replaces Anthropic's error format for endpoints that speak another dialect."""
    await send({"type": "http.response.start", "status": error.status, "headers": error.response_headers(request_id)})
    await send({"type": "http.response.body", "body": error.body(request_id) if body is None else body})
