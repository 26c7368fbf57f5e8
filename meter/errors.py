"""One error tree for everything meter itself refuses, rendered in Anthropic's error format.

    MeterError                      status  Anthropic error.type
    ├── InvalidRequest              400     invalid_request_error
    ├── AuthenticationFailed        401     authentication_error
    ├── PermissionDenied            403     permission_error
    ├── NotFound                    404     not_found_error
    ├── MethodNotAllowed            405     invalid_request_error
    ├── RequestTimeout              408     invalid_request_error
    ├── RequestTooLarge             413     request_too_large
    ├── RateLimited                 429     rate_limit_error
    ├── InternalError               500     api_error
    ├── UpstreamUnavailable         502     api_error
    ├── UpstreamTimeout             504     timeout_error
    └── Overloaded                  529     overloaded_error

Upstream errors are never turned into these: they are relayed unmodified. Errors outside the
proxy path (the admin API, unknown paths) reach `render_error`, Litestar's one exception handler,
which maps lower-layer errors to these once.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from sqlalchemy.exc import DBAPIError

from meter.credentials import new_id

log = logging.getLogger("meter")

# Anthropic's error.type for each HTTP status (errors page; other 4xx read as invalid requests,
# other 5xx as api_error). The one table for Anthropic's dialect: the classes below use it too.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    """Anthropic's error.type for a status, the documented one or its class's."""
    return ERROR_TYPES.get(status) or ("invalid_request_error" if 400 <= status < 500 else "api_error")


class MeterError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.error_type = error_type_for(cls.status)

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


class AuthenticationFailed(MeterError):
    status = 401


class PermissionDenied(MeterError):
    status = 403


class NotFound(MeterError):
    status = 404


class MethodNotAllowed(MeterError):
    status = 405


class RequestTimeout(MeterError):
    status = 408


class RequestTooLarge(MeterError):
    status = 413


class RateLimited(MeterError):
    status = 429


class InternalError(MeterError):
    status = 500


class UpstreamUnavailable(MeterError):
    status = 502


class UpstreamTimeout(MeterError):
    status = 504


class Overloaded(MeterError):
    status = 529


async def send_error(send: Any, error: MeterError, request_id: str, body: bytes | None = None) -> None:
    """Write `error` as a complete ASGI response (the proxy path renders errors itself); `body`
    replaces Anthropic's error format for endpoints that speak another dialect."""
    await send({"type": "http.response.start", "status": error.status, "headers": error.response_headers(request_id)})
    await send({"type": "http.response.body", "body": error.body(request_id) if body is None else body})


def render_error(request: Request, exc: Exception) -> Response[bytes]:  # type: ignore[type-arg]
    """Litestar's exception handler: every error outside the proxy path in Anthropic's format."""
    error = as_meter_error(exc)
    request_id = new_id("req")
    headers = {k.decode(): v.decode() for k, v in error.response_headers(request_id)}
    return Response(error.body(request_id), status_code=error.status, headers=headers, media_type=MediaType.JSON)


def as_meter_error(exc: Exception) -> MeterError:
    if isinstance(exc, MeterError):
        return exc
    if _is_data_error(exc):
        # Postgres refused a value (a NUL character in a path, a number too large): the request's fault.
        return InvalidRequest("A value in the request cannot be stored: a character or a number is out of range.")
    if isinstance(exc, ValidationException):
        detail = "; ".join(
            f"{e.get('key', 'body')}: {e.get('message')}" for e in (exc.extra or []) if isinstance(e, dict)
        )
        return InvalidRequest(detail or exc.detail)
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return NotFound("Not found: no such endpoint.")
        if exc.status_code == 405:
            return MethodNotAllowed(exc.detail, {"allow": (exc.headers or {}).get("allow", "")})
        if exc.status_code == 413:
            return RequestTooLarge(exc.detail)
        if exc.status_code < 500:
            return InvalidRequest(exc.detail)
    log.error("unexpected error", exc_info=exc)
    return InternalError("Internal error in meter.")


def _is_data_error(exc: Exception) -> bool:
    """Postgres's class 22 (data exception), however the driver wrapped it."""
    if isinstance(exc, UnicodeEncodeError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    causes = (exc.orig, getattr(exc.orig, "__cause__", None))
    return any(str(getattr(cause, "sqlstate", "")).startswith("22") for cause in causes)
