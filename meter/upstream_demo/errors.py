"""The one error type of the demo upstream, carrying Anthropic's HTTP status and `error.type`."""

from __future__ import annotations

from meter.errors import error_type_for


class DemoError(Exception):
    """A request the demo upstream answers with an Anthropic error body instead of a reply."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type_for(status)
        self.message = message
        self.headers = headers or {}


def invalid_request(message: str) -> DemoError:
    return DemoError(400, message)
