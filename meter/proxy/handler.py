"""What an endpoint does with a request, beside what every request goes through (proxy/__init__.py).

Each entry of the endpoint table names a Handler class; the gateway makes one instance per
request (so a handler may keep what it read from the request for the answer) and calls it at
three points: `prepare` (read the tenant's request, check what meter relies on, and say what to
send upstream, or answer itself), then `answer` or `stream` (the tenant's view of the upstream's
answer), and `error` (meter's own refusals, in the endpoint's error format). A handler is made
with the Services it may need (the database, for what tenants own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from meter.errors import MeterError
from meter.proxy.auth import Caller
from meter.proxy.estimate import RequestShape, WorstCase
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
    # The body of an endpoint that spools it (too large to hold in memory), instead of `body`.
    spool: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """meter's own URL as this client reached it (for URLs meter hands out, such as results_url)."""
        host = self.headers.get(b"host", b"localhost").decode("latin-1")
        return f"http://{host}"


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    path: str
    query: bytes
    headers: Headers
    body: bytes
    # The body as parsed (a JSON object), when the endpoint reads one: what the reservation reads.
    document: dict[str, Any] | None = None
    # A body sent as it is read (a spooled upload), instead of `body`.
    stream: AsyncIterator[bytes] | None = None


@dataclass(frozen=True)
class Answer:
    """An answer meter gives itself, without the upstream (lists of a tenant's own objects)."""

    status: int
    body: bytes
    # The body, made only once the limits stage admitted the request: a report costs a query that a
    # request refused for its rate should not cost.
    deferred: Callable[[], Awaitable[bytes]] | None = None


class WorstCases(Protocol):
    """The limits stage's bound of a call (proxy/limits.py `Limiter.worst_case`)."""

    def worst_case(self, caller: Caller, model: str, shape: RequestShape, max_tokens: int) -> WorstCase: ...


class Billing(Protocol):
    """The batch billing worker (batches/billing.py): bills one ended batch now, if not yet billed."""

    async def bill_now(self, batch_id: str) -> None: ...


@dataclass(frozen=True)
class Services:
    """What handlers may use beside the request: the database, meter's public URL if set, the
    reservation bound of a call, and the batch billing worker."""

    engine: AsyncEngine | None = None
    public_url: str | None = None
    worst_cases: WorstCases | None = None
    billing: Billing | None = None


class StreamTranslator(Protocol):
    """Turns an upstream SSE stream into the tenant's, chunk by chunk."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


class Handler(Protocol):
    # True: the upstream's answer is streamed through untouched (downloads); else read whole.
    passthrough: bool

    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        """What to send upstream (or meter's own answer); sets what the request says (model, stream,
        max_tokens) on `exchange`; raises a MeterError to refuse it before anything is forwarded."""

    async def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        """The tenant's status and body for a whole upstream answer (a reply or an error)."""

    def stream(self) -> StreamTranslator | None:
        """A translator for a streamed reply, or None to relay the stream untouched."""

    def error(self, error: MeterError, request_id: str) -> bytes | None:
        """meter's own error in this endpoint's format; None for Anthropic's."""


class Anthropic:
    """The answer and error behaviour of endpoints that speak Anthropic's API: untouched."""

    passthrough = False

    def __init__(self, services: Services | None = None) -> None:
        self.services = services or Services()

    async def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        return status, body

    def stream(self) -> StreamTranslator | None:
        return None

    def error(self, error: MeterError, request_id: str) -> bytes | None:
        return None
