"""What an endpoint does with a request, beside what every request goes through (proxy/__init__.py).

Each entry of the endpoint table names a Handler class; the gateway makes one instance per
request (so a handler may keep what it read from the request for the answer) and calls it at
three points: `prepare` (read the tenant's request, check what meter relies on, and say what to
send upstream), then `answer` or `stream` (the tenant's view of the upstream's answer), and
`error` (meter's own refusals, in the endpoint's error format).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from meter.errors import MeterError
from meter.proxy.exchange import Exchange

# Sent upstream for clients that do not send Anthropic's version header (OpenAI clients).
ANTHROPIC_VERSION = b"2023-06-01"

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class TenantRequest:
    """A request as it came in, routed: meter's own normalised path (what is forwarded, never the
    client's raw path) and the endpoint's path parameters, already validated."""

    method: str
    path: str
    params: dict[str, str]
    query: bytes
    # Lower-case names, for lookups (the last of a repeated header wins).
    headers: dict[bytes, bytes]
    # The headers to forward: the tenant's, filtered, with the operator's credential.
    forward_headers: Headers
    body: bytes


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    path: str
    query: bytes
    headers: Headers
    body: bytes
    # The body as parsed (a JSON object), when the endpoint reads one: what the reservation reads.
    document: dict[str, Any] | None = None


class StreamTranslator(Protocol):
    """Turns an upstream SSE stream into the tenant's, chunk by chunk."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


class Handler(Protocol):
    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest:
        """What to send upstream; sets what the request says (model, stream, max_tokens) on
        `exchange`; raises a MeterError to refuse the request before anything is forwarded."""

    def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        """The tenant's status and body for a whole upstream answer (a reply or an error)."""

    def stream(self) -> StreamTranslator | None:
        """A translator for a streamed reply, or None to relay the stream untouched."""

    def error(self, error: MeterError, request_id: str) -> bytes | None:
        """meter's own error in this endpoint's format; None for Anthropic's."""


class Anthropic:
    """The answer and error behaviour of endpoints that speak Anthropic's API: untouched."""

    def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        return status, body

    def stream(self) -> StreamTranslator | None:
        return None

    def error(self, error: MeterError, request_id: str) -> bytes | None:
        return None
