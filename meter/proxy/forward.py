"""The upstream client: one shared connection pool, header rewriting, and mapping of transport
failures to meter's errors (at this boundary only).

Requests go out on one aiohttp session directly (no httpx Request per call: building one and
handing its headers over cost more than a tenth of meter's CPU per request); what comes back is an
httpx Response streaming from aiohttp (httpx_aiohttp's stream, whose errors are httpx's). The
session keeps no cookies: one jar for every tenant's calls would carry the upstream's cookies from
one tenant's call to the next (docs/benchmarks.md has the measurements).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import aiohttp
import httpx
import yarl
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions
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

    async def send(self, call: UpstreamRequest) -> httpx.Response:
        """Send a request; the response body is left unread, to be streamed by the caller."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        headers = CIMultiDict((name.decode("latin-1"), value.decode("latin-1")) for name, value in call.headers)
        data = call.stream if call.stream is not None else (call.body or None)
        try:
            with map_aiohttp_exceptions():
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
        except httpx.TimeoutException as exc:
            # httpx-aiohttp maps every aiohttp connection error to a timeout, a reset one included.
            if isinstance(exc.__cause__, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
                raise UpstreamUnavailable("The upstream API closed the connection without answering.") from exc
            raise UpstreamTimeout("The upstream API did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"The upstream API could not be reached: {exc.__class__.__name__}.") from exc
        return httpx.Response(reply.status, headers=reply.raw_headers, stream=AiohttpResponseStream(reply))

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


def response_headers(upstream: httpx.Response) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as the tenant gets them."""
    raw = [(name.lower(), value) for name, value in upstream.headers.raw]
    dropped = NOT_RELAYED | _nominated(raw)
    return [(name, value) for name, value in raw if name not in dropped and not name.startswith(NOT_RELAYED_PREFIXES)]


def _nominated(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names a `connection` header lists: hop-by-hop for this connection only."""
    names = [value for name, value in headers if name == b"connection"]
    if not names:
        return frozenset()
    return frozenset(token.strip().lower() for value in names for token in value.split(b","))
