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

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TypeVar
from urllib.parse import urlsplit

import httptools

# Connections idle longer than this are not reused (servers close idle ones, and one that is
# closing at the moment it is reused answers nothing): a new one is opened instead.
IDLE_S = 15.0
# Body bytes buffered past this pause reading from the socket until the reader catches up.
HIGH_WATER = 256 * 1024
CRLF = b"\r\n"
T = TypeVar("T")


class ConnectError(Exception):
    """The upstream could not be connected to: nothing was sent."""


class Disconnected(Exception):
    """The connection closed or broke before the answer's head was complete."""


class BrokenAnswer(Exception):
    """The answer broke off, or was not valid HTTP, after its head."""


class Answer:
    """One answer: status and raw headers at once, the body read through `read` or `chunks`."""

    __slots__ = ("_connection", "raw_headers", "status")

    def __init__(self, connection: _Connection, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self._connection = connection
        self.status = status
        self.raw_headers = raw_headers  # names in lower case

    def header(self, name: str) -> str:
        """The header's value (the first, when repeated), '' when absent; `name` in lower case."""
        wanted = name.encode("latin-1")
        for key, value in self.raw_headers:
            if key == wanted:
                return value.decode("latin-1")
        return ""

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            chunk = await connection.next_chunk()
            if chunk is None:
                return
            yield chunk

    def release(self) -> None:
        """Done with it: the connection goes back to its pool if the body was read to its end."""
        self._connection.finish()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._head: asyncio.Future[Answer] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: Exception | None = None
        self._reusable = False
        # An answer with neither a length nor chunks ends when the connection does.
        self._until_eof = False
        self._paused = False
        self._write_ready: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        # Between `request` and `finish`: an answer is being read from it.
        self._in_use = False
        # Counted among the pool's open connections until it is lost (or its opening failed).
        self.counted = True
        self.closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._in_use:  # bytes nobody asked for, on an idle connection: not to be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BrokenAnswer("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BrokenAnswer(f"not valid HTTP: {exc}"))

    def eof_received(self) -> bool:
        self.closed = True  # never handed out again, even before connection_lost
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.uncount()
        if self._head is None and self._until_eof and exc is None:
            self._complete = True
            self._wake()
        elif self._head is not None or not self._complete:
            self._fail(None)
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def pause_writing(self) -> None:
        self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): the real one follows
            self._headers = []
            return
        self._reusable = self._parser.should_keep_alive()
        framing = (b"content-length", b"transfer-encoding")
        self._until_eof = status not in (204, 304) and not any(name in framing for name, _ in self._headers)
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(Answer(self, status, self._headers))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._head is None:
            self._complete = True
            self._wake()

    # The request

    async def request(self, head: bytes, body: bytes | AsyncIterator[bytes], read_timeout_s: float) -> Answer:
        assert self.transport is not None
        self._in_use = True
        # Kept here: the parser's callbacks clear self._head once the answer's head is in.
        answer = self._head = self._loop.create_future()
        self._headers, self._complete, self._error, self._until_eof = [], False, None, False
        self._read_timeout_s = read_timeout_s
        if isinstance(body, bytes):
            self.transport.write(head + body if len(body) < HIGH_WATER else head)
            if len(body) >= HIGH_WATER:
                self.transport.write(body)
        else:
            try:
                await self._send_chunked(head, body, answer)
            except BaseException:
                answer.cancel()  # nobody waits for the answer of an upload given up on
                raise
        return await self._wait(answer)

    async def _send_chunked(self, head: bytes, body: AsyncIterator[bytes], answer: asyncio.Future[Answer]) -> None:
        assert self.transport is not None
        self.transport.write(head)
        try:
            async for chunk in body:
                if self.closed or answer.done():
                    return  # answered (or gone) before the upload's end: the answer says why
                if chunk:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if self._write_ready is not None:
                    # An upstream that stops reading gets the read deadline, as one that stops answering.
                    await self._wait(self._write_ready)
            self.transport.write(b"0\r\n\r\n")
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body; None at its end."""
        while not self._body:
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            await self._wait(self._waiter)
        chunk = self._body.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= HIGH_WATER // 4 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    async def _wait(self, future: asyncio.Future[T]) -> T:
        timer = self._loop.call_later(self._read_timeout_s, self._timed_out, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _timed_out(self, future: asyncio.Future[T]) -> None:
        if not future.done():
            future.set_exception(TimeoutError("no answer from the upstream in time"))
        self.close()  # whatever it sends later is not wanted: the slot is free again at once

    def _fail(self, error: Exception | None) -> None:
        self._reusable = False
        head, self._head = self._head, None
        if head is not None:
            if not head.done():
                head.set_exception(error or Disconnected("the upstream closed the connection without answering"))
            return
        self._error = error or BrokenAnswer("the upstream closed the connection before the answer was complete")
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def finish(self) -> None:
        """The answer is done with: reuse the connection if it was read to its end, else close it."""
        if not self._in_use:
            return  # already given back
        self._in_use = False
        self._body.clear()
        self._buffered = 0
        if self._complete and self._reusable and not self.closed and not self._paused:
            self._pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        """Drop the connection now, with whatever it still has to send (an upload given up on)."""
        self._reusable = False
        if self.transport is not None:
            self.transport.abort()

    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def uncount(self) -> None:
        if self.counted:
            self.counted = False
            self._pool.closed()


class Pool:
    """Keep-alive connections to one origin, at most `limit` open at once."""

    def __init__(self, base_url: str, limit: int, connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the upstream URL must be http(s)://host[:port]: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rsplit("@", 1)[-1].encode("idna")
        self.prefix = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._connect_timeout_s = connect_timeout_s
        self._limit = limit
        self._open = 0
        self._idle: list[_Connection] = []
        # Requests waiting for a connection while `limit` are open: each gets a released connection,
        # or None when one closed (it may then open its own).
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self.loop = asyncio.get_running_loop()

    async def request(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes | AsyncIterator[bytes],
        read_timeout_s: float,
    ) -> Answer:  # fmt: skip
        """Send a request; the answer's body is left to read. The caller must `release` it."""
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\nhost: ".encode("latin-1"), self.host_header, CRLF]
        for name, value in headers:
            lines += (name, b": ", value, CRLF)
        framing = b""
        if not isinstance(body, bytes):
            framing = b"transfer-encoding: chunked\r\n"
        elif body or method not in ("GET", "HEAD", "DELETE"):
            framing = b"content-length: %d\r\n" % len(body)
        lines += (framing, CRLF)
        head = b"".join(lines)
        # The request line, host, each header, the framing line if any, the blank line: a CR or LF
        # inside a name or value would start a line of its own.
        line_count = len(headers) + 3 + (framing != b"")
        if head.count(b"\n") != line_count or head.count(b"\r") != line_count:
            raise ValueError("a request header holds a line break")
        connection = await self._connection()
        try:
            return await connection.request(head, body, read_timeout_s)
        except BaseException:
            connection.close()
            raise

    async def _connection(self) -> _Connection:
        deadline = self.loop.time() + self._connect_timeout_s
        while True:
            now = time.monotonic()
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed and not connection.closing() and now - connection.idle_since < IDLE_S:
                    return connection
                connection.close()
            if self._open < self._limit:
                return await self._connect()
            # At the cap: wait for a connection given back or closed, within the connect deadline.
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on(waiter.result())  # handed over as this request gave up: the next one's
                raise
            if handed is not None and not handed.closed:
                return handed

    async def _connect(self) -> _Connection:
        self._open += 1  # counted from now on: the connection uncounts itself when it is lost
        made: list[_Connection] = []

        def protocol() -> _Connection:
            made.append(_Connection(self))
            return made[-1]

        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(protocol, self.host, self.port, ssl=self._ssl),
                self._connect_timeout_s,
            )
        except BaseException as exc:
            if made:  # opened, then given up on (a deadline at that moment, a shutdown)
                made[-1].close()
                made[-1].uncount()
            else:
                self.closed()
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
            raise
        return connection

    def put_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._pass_on(connection)

    def closed(self) -> None:
        """A connection of this pool is gone (or never opened): one more may be opened."""
        self._open -= 1
        self._pass_on(None)

    def _pass_on(self, connection: _Connection | None) -> None:
        """A connection given back (or, None, room for one) goes to the first request still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is not None:
            if connection.closed:
                return
            self._idle.append(connection)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
