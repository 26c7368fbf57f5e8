"""A raw HTTP/1.1 client over a plain socket, for requests no well-behaved client sends: request
targets exactly as written (dot segments, encoded slashes, NUL), headers that never end, bodies that
stop half-way. It parses just enough of an answer (status, headers, a content-length or chunked body)
to check it, and says whether the server closed the connection after it."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# A client address of its own for tests whose failures meter counts per address (the auth throttle):
# every 127.x.y.z reaches the loopback interface, and meter sees it as the peer.
LOOPBACK = "127.0.0.1"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    # The server closed the connection after this answer.
    closed: bool = False
    header_lines: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or LOOPBACK, parts.port or 80


class Connection:
    """One TCP connection to `base_url`, written and read by hand."""

    def __init__(self, base_url: str, source: str = LOOPBACK, timeout_s: float = 30.0) -> None:
        self.sock = socket.create_connection(address(base_url), timeout=timeout_s, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.eof = False

    def send(self, data: bytes) -> bool:
        """Write `data`; False if the server has closed the connection (it may have answered)."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def readable(self, wait_s: float = 0.0) -> bool:
        """Whether bytes (or the end of the stream) are waiting to be read."""
        if self._buffer or self.eof:
            return True
        self.sock.settimeout(wait_s if wait_s > 0 else 0.0001)
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:  # reset: the server is gone
            self.eof = True
            return True
        finally:
            self.sock.settimeout(30.0)
        if not chunk:
            self.eof = True
        self._buffer += chunk
        return True

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:  # reset: the server is gone
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self._buffer += chunk
        return True

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed before {marker!r}; got {self._buffer[:200]!r}")
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise ConnectionError(f"connection closed {size - len(self._buffer)} bytes before the body's end")
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read_head(self) -> tuple[int, dict[str, str], list[tuple[str, str]]]:
        """The status and headers of the next answer (repeated headers joined with commas, and as sent)."""
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        header_lines = [(name.strip().lower(), value.strip()) for name, _, value in (h.partition(":") for h in lines)]
        headers: dict[str, str] = {}
        for name, value in header_lines:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return status, headers, header_lines

    def read_answer(self, head_request: bool = False) -> Answer:
        """The next answer on this connection (its body too, unless it answers a HEAD request)."""
        status, headers, header_lines = self.read_head()
        while 100 <= status < 200:  # interim answers (100 Continue): the real one follows
            status, headers, header_lines = self.read_head()
        if head_request or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                parts.append(self._read_exactly(size))
                self._read_exactly(2)
            self._read_until(b"\r\n")  # no trailers: the empty line after the last chunk
            body = b"".join(parts)
        elif "content-length" in headers:
            body = self._read_exactly(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self._buffer = self._buffer, b""
        # Checked only when announced: otherwise the connection may rightly stay open.
        closes = headers.get("connection", "").lower() == "close"
        return Answer(status, headers, body, closes and self.closed_by_server(), header_lines)

    def closed_by_server(self) -> bool:
        """Whether the server has closed its side: the next read finds the end of the stream."""
        while not self.eof and not self._buffer:
            self._fill()
        return self.eof and not self._buffer

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


Headers = dict[str, str] | list[tuple[str, str]]


def request_bytes(
    method: str,
    target: bytes,
    headers: Headers | None = None,
    body: bytes = b"",
    length: int | None = None,
    keep_alive: bool = False,
) -> bytes:
    """An HTTP/1.1 request with `target` exactly as given, closing the connection after it unless
    `keep_alive`; its `content-length` is `length` when given (the body may then be sent apart), else
    the body's, and none when the headers say `transfer-encoding`."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"{method} ".encode() + target + b" HTTP/1.1", b"host: meter.test"]
    if not keep_alive:
        lines.append(b"connection: close")
    lines += [name.encode("latin-1") + b": " + value.encode("latin-1") for name, value in items]
    chunked = any(name.lower() == "transfer-encoding" for name, _ in items)
    if not chunked and (length is not None or body or method in ("POST", "PUT", "PATCH")):
        lines.append(b"content-length: " + str(len(body) if length is None else length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(
    base_url: str,
    method: str,
    target: bytes,
    headers: Headers | None = None,
    body: bytes = b"",
    source: str = LOOPBACK,
) -> Answer:
    """Send one request, exactly as written, on a new connection and read its answer."""
    with Connection(base_url, source) as connection:
        connection.send(request_bytes(method, target, headers, body))
        return connection.read_answer(head_request=method == "HEAD")


class HeldUpload:
    """A request whose body trickles in a byte at a time, well within meter's deadline between
    chunks, until `release()`: it holds whatever slot meter gave it (in flight, per tenant) for as
    long as a test needs."""

    INTERVAL_S = 0.2

    def __init__(self, base_url: str, target: bytes, headers: dict[str, str], length: int = 100_000) -> None:
        self.connection = Connection(base_url)
        self.connection.send(request_bytes("POST", target, headers, length=length))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        # Leading whitespace is valid JSON: the body stays well-formed however far it got.
        while not self._stop.is_set():
            if not self.connection.send(b" "):
                return
            time.sleep(self.INTERVAL_S)

    def answered(self) -> bool:
        """Whether meter has answered this request already (it refused it instead of reading on)."""
        return self.connection.readable()

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self.connection.close()
