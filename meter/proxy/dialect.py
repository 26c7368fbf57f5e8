"""How a tenant-facing endpoint speaks, when it does not speak Anthropic's Messages API itself.

The gateway always meters the native Anthropic exchange with the upstream; a dialect translates
the tenant's request into it, and the answer (JSON, stream, or error) back out of it.
"""

from __future__ import annotations

from typing import Protocol

from meter.errors import MeterError


class StreamTranslator(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


class Dialect(Protocol):
    # The Anthropic path the translated request goes to.
    upstream_path: str

    def request(self, body: bytes) -> bytes:
        """The Anthropic request body for the tenant's; raises a MeterError if it is invalid."""

    def answer(self, status: int, body: bytes) -> bytes:
        """The tenant's answer for a whole upstream answer (a reply or an error)."""

    def stream(self) -> StreamTranslator:
        """A translator for one streamed reply, made once the request was read."""

    def error(self, error: MeterError, request_id: str) -> bytes:
        """meter's own error, in the dialect's error format."""
