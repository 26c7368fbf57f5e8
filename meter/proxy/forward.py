"""The upstream client: one shared connection pool (meter's own HTTP/1.1 client, proxy/http1/), header
rewriting, and mapping of transport failures to meter's errors (at this boundary only).

Nothing is kept between calls but connections: no cookies (one jar for every tenant's calls would
carry the upstream's cookies from one tenant's call to the next), no redirects followed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

from meter.errors import UpstreamTimeout, UpstreamUnavailable
from meter.proxy import http1
from meter.proxy.handler import UpstreamRequest

# Never forwarded in either direction: hop-by-hop headers (RFC 9110 7.6.1), and any header the
# `connection` header names, and the framing that the server on each side recomputes.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
# Request headers that stay with meter: the tenant's credential (the upstream gets the operator's
# key instead); cookies and client-address headers, which are about the tenant's hop, not meter's;
# the workspace selector, which would let a tenant pick among the operator's workspaces; and
# accept-encoding, replaced by identity so meter can read usage from the bytes it relays.
NOT_FORWARDED = HOP_BY_HOP | {
    b"x-api-key",
    b"authorization",
    b"cookie",
    b"forwarded",
    b"x-real-ip",
    b"anthropic-workspace-id",
    b"accept-encoding",
}
NOT_FORWARDED_PREFIXES = (b"x-forwarded-",)
# Response headers that stay with the operator: the operator's organization, its cookies, and its
# organization-wide rate limits, which would tell a tenant the traffic of every tenant (meter sends a
# limited tenant its own rate-limit headers instead).
NOT_RELAYED = HOP_BY_HOP | {b"set-cookie", b"anthropic-organization-id"}
NOT_RELAYED_PREFIXES = (b"anthropic-ratelimit-", b"anthropic-priority-")


# What reading an answer's body can raise.
_READ_ERRORS = (http1.BrokenAnswer, TimeoutError, OSError)


class UpstreamLost(Exception):
    """The upstream's answer broke off while it was read: reset, timed out, or badly framed."""


class UpstreamResponse:
    """The upstream's answer, its body not read yet."""

    __slots__ = ("_answer", "status_code")

    def __init__(self, answer: http1.Answer) -> None:
        self.status_code = answer.status
        self._answer = answer

    def header(self, name: str) -> str:
        """The header's value ('' when absent); `name` in lower case."""
        return self._answer.header(name)

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._answer.raw_headers

    async def aread(self) -> bytes:
        try:
            return await self._answer.read()
        except _READ_ERRORS as exc:
            raise UpstreamLost(f"{type(exc).__name__}: {exc}") from exc

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive."""
        try:
            async for chunk in self._answer.chunks():
                yield chunk
        except _READ_ERRORS as exc:
            raise UpstreamLost(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Give the connection back (kept for reuse only if the body was read to its end)."""
        self._answer.release()


class Upstream:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        max_connections: int = 1000,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 600.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._auth = [(b"x-api-key", api_key.encode())] if api_key else []
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._pool: http1.Pool | None = None

    def request_headers(self, incoming: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The tenant's headers as the upstream gets them (names arrive lower-cased from the server)."""
        dropped = NOT_FORWARDED | _nominated(incoming)
        headers = [
            (name, value)
            for name, value in incoming
            if name not in dropped and not name.startswith(NOT_FORWARDED_PREFIXES)
        ]
        headers.extend(self._auth)
        headers.append((b"accept-encoding", b"identity"))
        return headers

    async def send(self, call: UpstreamRequest) -> UpstreamResponse:
        """Send a request; the response body is left unread, to be streamed by the caller."""
        if self._pool is None:
            self._pool = http1.Pool(self._base_url, self._max_connections, self._connect_timeout_s)
        target = call.path + ("?" + call.query.decode("latin-1") if call.query else "")
        body = call.stream if call.stream is not None else call.body
        try:
            answer = await self._pool.request(call.method, target, call.headers, body, self._read_timeout_s)
        except http1.ConnectError as exc:  # refused, unresolvable: never reached
            raise UpstreamUnavailable("The upstream API could not be reached.") from exc
        except TimeoutError as exc:  # connecting or waiting for the answer's head (before OSError: it is one)
            raise UpstreamTimeout("The upstream API did not answer in time.") from exc
        except (http1.Disconnected, http1.BrokenAnswer, OSError) as exc:
            raise UpstreamUnavailable("The upstream API closed the connection without answering.") from exc
        return UpstreamResponse(answer)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()


def response_headers(upstream_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers (as received) as the tenant gets them."""
    raw = [(name.lower(), value) for name, value in upstream_headers]
    dropped = NOT_RELAYED | _nominated(raw)
    return [(name, value) for name, value in raw if name not in dropped and not name.startswith(NOT_RELAYED_PREFIXES)]


def _nominated(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names a `connection` header lists: hop-by-hop for this connection only."""
    names = [value for name, value in headers if name == b"connection"]
    if not names:
        return frozenset()
    return frozenset(token.strip().lower() for value in names for token in value.split(b","))
