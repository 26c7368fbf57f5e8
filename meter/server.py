"""The HTTP server's own defences, which uvicorn's httptools protocol lacks: a deadline for a
request's headers (a client that drips them a byte at a time is cut off), a cap on their size, and
a cap on open connections answered in Anthropic's error format (uvicorn's own is plain text).

uvicorn bounds the idle time between requests (keep-alive) but not the time a client takes to send
headers, nor their size, so one slow client per connection could hold connections forever. This
protocol class is passed to uvicorn as `http=`; the rest of the request (body deadlines and caps,
per-tenant admission) is the gateway's (proxy/request.py, proxy/gate.py).

It also sends what a response writes in one turn of the event loop as one write: uvicorn writes a
response's head and its body separately, a system call and a TCP segment each. And it adds header
lines meter formats itself (the rate-limit headers) to a response's head as they are, past uvicorn's
checks of each line (about 0.4 µs a line; a limited answer carries six).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meter.settings import Settings

# Set in a request's scope once the server holds its whole body: reading it cannot wait, so the
# gateway reads it without a deadline (a timer costs about 2 µs, asyncio.timeout about 5).
BODY_RECEIVED = "meter.body_received"
# Set in a request's scope: a function taking header lines (b"name: value\r\n" each) to add to the
# response head the request writes next. Only for lines meter formats itself from numbers and
# dates: they are not checked again.
HEAD_LINES = "meter.head_lines"
_FINAL_HEADS = tuple(f"HTTP/1.1 {digit}".encode() for digit in "2345")


class CoalescedWrites:
    """The connection as a request's response cycle sees it: its writes are held until the event
    loop's next turn and go out as one (or at once, before a close)."""

    __slots__ = ("_head_lines", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._head_lines = b""

    def add_head_lines(self, lines: bytes) -> None:
        """`lines` go into the next response head written (HEAD_LINES): the caller sends its
        response's start next. What a response added but never wrote is dropped when it completes."""
        self._head_lines = lines

    def write(self, data: bytes) -> None:
        # uvicorn writes a head in one write, ending with the blank line; an interim answer ("100
        # Continue") is not the response's head.
        if self._head_lines and data.endswith(b"\r\n\r\n") and data.startswith(_FINAL_HEADS):
            data = data[:-2] + self._head_lines + b"\r\n"
            self._head_lines = b""
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Set from the settings by `configure` in each process before it serves (class attributes, because
    # uvicorn makes the protocol instances itself).
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    # Open connections past which a request is refused at once (503, in Anthropic's error format).
    max_connections: int = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        # Bytes received since the current request's headers began, while they are being read.
        self._header_bytes: int | None = 0
        self._headers_seen = 0
        # A request's headers have begun and are not complete yet.
        self._in_headers = False
        # Set once the connection was answered and closed here: what the parser reads after is dropped.
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Everything written to the connection goes through it, uvicorn's writes and closes too.
        self._writes = CoalescedWrites(transport, self.loop)
        self.transport = self._writes  # type: ignore[assignment]
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._header_bytes is None:
            super().data_received(data)
        else:
            headers_seen = self._headers_seen
            super().data_received(data)
            # Counted only while the same request's headers are still incomplete after this chunk: a
            # chunk that completes them also holds the body, which is not the headers' size.
            if self._header_bytes is not None and headers_seen == self._headers_seen:
                self._header_bytes += len(data)
                if self._header_bytes > self.max_header_bytes:
                    self._refuse(431, "Request Header Fields Too Large", "The request headers are too large.")
        # Headers that began in this chunk get their deadline only if it did not complete them: a
        # request whose headers come in one read (nearly all) needs no timer (about 2 µs each).
        if self._in_headers and self._header_deadline is None and not self._refused:
            self._await_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._headers_seen += 1
        self._headers_done()
        # The whole header block, also when it arrived in the same read as its end (which
        # data_received does not count): the request line's target and every header line.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", "The request headers are too large.")
            return
        if len(self.connections) > self.max_connections:
            self._refuse(503, "Service Unavailable", "meter has as many connections open as it may; try again.")
            return
        self.scope[HEAD_LINES] = self._writes.add_head_lines  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # Lines a response added without writing a head of its own are not the next request's.
        self._writes.add_head_lines(b"")
        super().on_response_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self.scope[BODY_RECEIVED] = True  # type: ignore[literal-required]
        # What comes next on this connection is the next request's headers.
        self._header_bytes = 0

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refuses (a raw control byte in the target, no leading slash):
        Anthropic's error format too, then the connection is closed (uvicorn's own is plain text)."""
        self._refuse(400, "Bad Request", "The request is not valid HTTP: " + msg.rstrip("."))

    def _await_headers(self) -> None:
        self._header_bytes = self._header_bytes or 0
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _headers_done(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        self._header_bytes = None
        self._in_headers = False

    def _headers_timed_out(self) -> None:
        self._header_deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(408, "Request Timeout", "The request headers did not arrive in time.")
        else:  # a response is under way (a pipelined request waits): end the connection after it
            self.cycle.keep_alive = False

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer in Anthropic's error format and close: the request never reaches the app."""
        self._refused = True
        self._headers_done()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # bytes piped behind a request still being answered: no room to reply
            return
        error_type = {431: "request_too_large", 503: "overloaded_error"}.get(status, "invalid_request_error")
        body = json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def configure(settings: Settings) -> None:
    GuardedHttpToolsProtocol.header_timeout_s = settings.header_timeout_s
    GuardedHttpToolsProtocol.max_header_bytes = settings.max_header_bytes
    GuardedHttpToolsProtocol.max_connections = settings.max_connections
