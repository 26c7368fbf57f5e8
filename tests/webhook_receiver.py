"""A webhook receiver on a real socket, in a thread of the test process: it records every POST
(path, headers, body) and answers by its path: `/ok` 200, `/fail-twice` 500 to the first two
attempts of each webhook-id and 200 after, `/fail` always 500, `/redirect` a 307 to `/ok`, and
`/drip` a 200 whose body comes a byte every 0.5 s."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self.base_url = ""

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def _record(self, received: Received) -> int:
        with self._lock:
            self._received.append(received)
            webhook_id = received.headers.get("webhook-id")
            earlier = sum(1 for r in self._received if r.headers.get("webhook-id") == webhook_id)
        if received.path == "/fail":
            return 500
        if received.path == "/fail-twice" and earlier <= 2:
            return 500
        return 200


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            status = state._record(Received(self.path, headers, body))
            if self.path == "/redirect":
                self.send_response(307)
                self.send_header("location", "/ok")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if self.path == "/drip":
                self.send_response(200)
                self.send_header("content-length", "1000")
                self.end_headers()
                for _ in range(1000):
                    time.sleep(0.5)
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return  # meter hung up: as it should
                return
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
