"""The pool of keep-alive connections to the upstream's origin, at most `limit` open at once."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from meter.proxy.http1.connection import CRLF, Answer, ConnectError, Connection

# Connections idle longer than this are not reused (servers close idle ones, and one that is
# closing at the moment it is reused answers nothing): a new one is opened instead.
IDLE_S = 15.0


@dataclass(frozen=True)
class Origin:
    """Where a pool connects, and the path its requests go under."""

    host: str
    port: int
    tls: bool
    host_header: bytes
    prefix: str

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of an http(s)://host[:port][/path] URL; ValueError for anything else."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the upstream URL must be http(s)://host[:port]: {url!r}")
        tls = parts.scheme == "https"
        # parts.port and the IDNA encoding raise ValueError for a port or host that is not one.
        port = parts.port or (443 if tls else 80)
        return cls(parts.hostname, port, tls, parts.netloc.rsplit("@", 1)[-1].encode("idna"), parts.path.rstrip("/"))


class Pool:
    """Keep-alive connections to one origin, at most `limit` open at once."""

    def __init__(self, base_url: str, limit: int, connect_timeout_s: float) -> None:
        self.origin = Origin.of(base_url)
        self._ssl = ssl.create_default_context() if self.origin.tls else None
        self._connect_timeout_s = connect_timeout_s
        self._limit = limit
        self._open = 0
        self._idle: list[Connection] = []
        # Requests waiting for a connection while `limit` are open: each gets a released connection,
        # or None when one closed (it may then open its own).
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self.loop = asyncio.get_running_loop()

    async def request(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes | AsyncIterator[bytes],
        read_timeout_s: float,
    ) -> Answer:  # fmt: skip
        """Send a request; the answer's body is left to read. The caller must `release` it."""
        start = f"{method} {self.origin.prefix}{target} HTTP/1.1\r\nhost: ".encode("latin-1")
        lines = [start, self.origin.host_header, CRLF]
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

    async def _connection(self) -> Connection:
        deadline = self.loop.time() + self._connect_timeout_s
        while True:
            now = time.monotonic()
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed and now - connection.idle_since < IDLE_S:
                    return connection
                connection.close()
            if self._open < self._limit:
                return await self._connect()
            # At the cap: wait for a connection given back or closed, within the connect deadline.
            waiter: asyncio.Future[Connection | None] = self.loop.create_future()
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

    async def _connect(self) -> Connection:
        self._open += 1  # counted from now on: the connection uncounts itself when it is lost
        made: list[Connection] = []

        def protocol() -> Connection:
            made.append(Connection(self))
            return made[-1]

        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(protocol, self.origin.host, self.origin.port, ssl=self._ssl),
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

    def put_back(self, connection: Connection) -> None:
        connection.idle_since = time.monotonic()
        self._pass_on(connection)

    def closed(self) -> None:
        """A connection of this pool is gone (or never opened): one more may be opened."""
        self._open -= 1
        self._pass_on(None)

    def _pass_on(self, connection: Connection | None) -> None:
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
