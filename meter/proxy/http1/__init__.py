"""meter's HTTP/1.1 client for the upstream: a pool of keep-alive connections, each an asyncio
protocol with httptools' response parser (the parser uvicorn uses for requests).

It does only what the proxy needs: one request at a time per connection, a request head and body
sent in one write (a streamed body chunked, with back-pressure), the answer's head as raw header
pairs, its body read whole or as it arrives, with a deadline for each wait. A general-purpose
client (aiohttp's ClientSession) spent about a third of meter's CPU per request on features the
proxy never uses: cookies, redirects, proxies, tracing, header multidicts, URL objects (645 -> 420
µs per request in one A/B run, docs/benchmarks.md). TLS is verified as `ssl.create_default_context`
does: the system's trusted authorities (or SSL_CERT_FILE's), and the host name.

Errors: `ConnectError` (never reached, nothing sent), `Disconnected` (the connection closed or broke
before the answer's head), `TimeoutError` (no byte within the read deadline), `BrokenAnswer` (the
answer broke off or was malformed after its head).
"""

from meter.proxy.http1.connection import HIGH_WATER, Answer, BrokenAnswer, ConnectError, Disconnected
from meter.proxy.http1.pool import Pool

__all__ = ["HIGH_WATER", "Answer", "BrokenAnswer", "ConnectError", "Disconnected", "Pool"]
