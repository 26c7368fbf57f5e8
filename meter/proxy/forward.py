"""The upstream client: one shared connection pool, header rewriting, and mapping of transport
failures to meter's errors (at this boundary only).

Requests go out on one aiohttp session directly (no httpx Request per call: building one and
handing its headers over cost more than a tenth of meter's CPU per request), and what comes back is
read through UpstreamResponse, a thin view of aiohttp's response (an httpx Response around it cost
another ~5 % in header and stream layers). The session keeps no cookies: one jar for every
tenant's calls would carry the upstream's cookies from one tenant's call to the next
(docs/benchmarks.md has the measurements).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import aiohttp
import yarl
from multidict import CIMultiDict

from meter.errors import UpstreamTimeout, UpstreamUnavailable
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


MAX_CACHED_URLS = 1000
# What aiohttp raises when a connection fails or a read times out (sock_read).
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


class UpstreamLost(Exception):
    """The upstream's answer broke off while it was read: reset, timed out, or badly framed."""


class UpstreamResponse:
    """The upstream's answer, its body not read yet."""

    __slots__ = ("_reply", "status_code")

    def __init__(self, reply: aiohttp.ClientResponse) -> None:
        self.status_code = reply.status
        self._reply = reply

    def header(self, name: str) -> str:
        """The header's value ('' when absent)."""
        return self._reply.headers.get(name, "")

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._reply.raw_headers

    async def aread(self) -> bytes:
        try:
            return await self._reply.read()
        except _TRANSPORT_ERRORS as exc:
            raise UpstreamLost(f"{type(exc).__name__}: {exc}") from exc

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive."""
        try:
            async for chunk in self._reply.content.iter_any():
                yield chunk
        except _TRANSPORT_ERRORS as exc:
            raise UpstreamLost(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Give the connection back (kept for reuse only if the body was read to its end)."""
        self._reply.release()
        await self._reply.wait_for_close()


_NO_AUTO_HEADERS = frozenset({"User-Agent", "Accept"})


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
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=read_timeout_s,
                                              connect=connect_timeout_s)  # fmt: skip
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, bytes], yarl.URL] = {}

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
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        headers = CIMultiDict((name.decode("latin-1"), value.decode("latin-1")) for name, value in call.headers)
        data = call.stream if call.stream is not None else (call.body or None)
        try:
            reply = await self._session.request(
                call.method,
                self._url(call.path, call.query),
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                timeout=self._timeout,
                # Only what the tenant sent (filtered) goes: no User-Agent or Accept of aiohttp's own.
                skip_auto_headers=_NO_AUTO_HEADERS,
            )
        except aiohttp.ClientConnectorError as exc:  # refused, unresolvable: never reached
            raise UpstreamUnavailable(f"The upstream API could not be reached: {exc.__class__.__name__}.") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise UpstreamUnavailable("The upstream API closed the connection without answering.") from exc
        except TimeoutError as exc:  # aiohttp's connect and read timeouts are TimeoutErrors too
            raise UpstreamTimeout("The upstream API did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"The upstream API could not be reached: {exc.__class__.__name__}.") from exc
        return UpstreamResponse(reply)

    def _url(self, path: str, query: bytes) -> yarl.URL:
        """Parsed once per path and query: nearly every request goes to the same few URLs."""
        url = self._urls.get((path, query))
        if url is None:
            if len(self._urls) > MAX_CACHED_URLS:
                self._urls.clear()
            url = yarl.URL(self._base_url + path + ("?" + query.decode("latin-1") if query else ""), encoded=True)
            self._urls[(path, query)] = url
        return url

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


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
