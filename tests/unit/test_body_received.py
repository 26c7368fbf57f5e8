"""The server tells the gateway when it already holds a request's whole body (server.BODY_RECEIVED),
so the body is read without a deadline; a body still on its way is read with one."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from meter.errors import RequestTimeout
from meter.proxy.request import read_body
from meter.server import BODY_RECEIVED, GuardedHttpToolsProtocol
from tests.support import eventually_async, free_port


async def test_the_server_says_so_only_once_the_whole_body_is_in() -> None:
    seen: list[tuple[bool, bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received = scope.get(BODY_RECEIVED, False)
        headers = dict(scope["headers"])
        try:
            body = await read_body(headers, receive, 1024, 0.5, received)
        except RequestTimeout:
            body = b"<timed out>"
        seen.append((received, body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    config = uvicorn.Config(app, port=port, http=GuardedHttpToolsProtocol, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:

        async def started() -> bool:
            return server.started

        await eventually_async(started, 10, "the server to start")
        head = b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"hello")  # whole
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + b"he")  # and the rest never comes
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
    finally:
        server.should_exit = True
        await serving
    assert seen == [(True, b"hello"), (False, b"<timed out>")]
