"""The upstream client: one shared connection pool, header rewriting, and mapping of transport
failures to meter's errors (at this boundary only).

httpx's Request and Response are the API; underneath is the aiohttp-based httpx transport, called
directly: a bare forwarder on httpx's own pool managed ~580 req/s here against ~3,900 on aiohttp,
and the AsyncClient layer (cookies, redirects, auth, header merging) cost a fifth of meter's CPU for
nothing a proxy needs (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

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
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._transport = AiohttpTransport(limits=limits)
        self._timeout = {"connect": connect_timeout_s, "read": read_timeout_s, "pool": connect_timeout_s}
        self._urls: dict[tuple[str, bytes], httpx.URL] = {}

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
        request = httpx.Request(
            call.method,
            self._url(call.path, call.query),
            headers=call.headers,
            content=call.stream if call.stream is not None else call.body,
            extensions={"timeout": self._timeout},
        )
        try:
            return await self._transport.handle_async_request(request)
        except httpx.TimeoutException as exc:
            # httpx-aiohttp maps every aiohttp connection error to a timeout, a reset one included.
            if isinstance(exc.__cause__, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
                raise UpstreamUnavailable("The upstream API closed the connection without answering.") from exc
            raise UpstreamTimeout("The upstream API did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"The upstream API could not be reached: {exc.__class__.__name__}.") from exc

    def _url(self, path: str, query: bytes) -> httpx.URL:
        """Parsed once per path and query: nearly every request goes to the same few URLs."""
        url = self._urls.get((path, query))
        if url is None:
            if len(self._urls) > MAX_CACHED_URLS:
                self._urls.clear()
            url = httpx.URL(self._base_url + path + ("?" + query.decode("latin-1") if query else ""))
            self._urls[(path, query)] = url
        return url

    async def aclose(self) -> None:
        await self._transport.aclose()


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
