"""The one error type of the demo upstream, carrying Anthropic's HTTP status and `error.type`."""

from __future__ import annotations

# Anthropic's `error.type` for each status the demo upstream answers (protocol note, section 4).
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class DemoError(Exception):
    """A request the demo upstream answers with an Anthropic error body instead of a reply."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = ERROR_TYPES[status]
        self.message = message
        self.headers = headers or {}


def invalid_request(message: str) -> DemoError:
    return DemoError(400, message)
