"""One upstream connection: an asyncio protocol with httptools' response parser (the parser uvicorn
uses for requests), one request at a time, and the answer it reads (pool.py keeps them)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

import httptools

# Body bytes buffered past this pause reading from the socket until the reader catches up.
HIGH_WATER = 256 * 1024
CRLF = b"\r\n"
# A deadline's timer may fire this early (the event loop's clock is in milliseconds): it is met then.
DEADLINE_SLACK_S = 0.001
T = TypeVar("T")


class Owner(Protocol):
    """What a connection needs of its pool (pool.py)."""

    loop: asyncio.AbstractEventLoop

    def put_back(self, connection: Connection) -> None: ...

    def closed(self) -> None: ...


class ConnectError(Exception):
    """The upstream could not be connected to: nothing was sent."""


class Disconnected(Exception):
    """The connection closed or broke before the answer's head was complete."""


class BrokenAnswer(Exception):
    """The answer broke off, or was not valid HTTP, after its head."""


class Answer:
    """One answer: status and raw headers at once, the body read through `read` or `chunks`."""

    __slots__ = ("_connection", "raw_headers", "status")

    def __init__(self, connection: Connection, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
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


class Connection(asyncio.Protocol):
    def __init__(self, pool: Owner) -> None:
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
        # The read deadline of what is awaited now, and the timer that checks it (_wait).
        self._deadline = 0.0
        self._waiting: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        # Between `request` and `finish`: an answer is being read from it.
        self._in_use = False
        # Counted among the pool's open connections until it is lost (or its opening failed).
        self.counted = True

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
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.uncount()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        # One timer per connection, moved on lazily (_check_deadline): making and cancelling a timer
        # for every wait cost about 2 µs, and deadlines are nearly always met.
        deadline = self._loop.time() + self._read_timeout_s
        self._deadline, self._waiting = deadline, future
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        try:
            return await future
        finally:
            self._waiting = None

    def _check_deadline(self) -> None:
        self._timer = None
        future = self._waiting
        if future is None or future.done():
            return  # nothing waits: the next wait sets a timer again
        if self._loop.time() < self._deadline - DEADLINE_SLACK_S:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)  # moved on since it was set
            return
        self._timed_out(future)

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

    @property
    def closed(self) -> bool:
        """Closing or gone (the upstream's FIN seen, or closed here): never handed out again."""
        return self.transport is None or self.transport.is_closing()

    def uncount(self) -> None:
        if self.counted:
            self.counted = False
            self._pool.closed()
