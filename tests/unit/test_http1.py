"""meter's HTTP/1.1 upstream client against real servers on real sockets: keep-alive reuse, every
framing of an answer, a streamed upload, back-pressure, the connection cap, deadlines, broken and
hostile answers, header injection refused, and TLS verified against a trusted CA only."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from meter.proxy import http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[int]]]:
    """A server speaking whatever `handler` writes; yields its URL and a list that counts connections."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        origin = f"https://localhost:{port}" if ssl_context else f"http://127.0.0.1:{port}"
        yield origin, connections
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def fetch(pool: http1.Pool) -> bytes:
    """GET / and its whole body; the connection given back."""
    answer = await pool.request("GET", "/", [], b"", 5)
    try:
        return await answer.read()
    finally:
        answer.release()


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # until the client closes

    return handler


JSON = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nRequest-Id: r1\r\n\r\n{"ok":true}'


async def test_answers_come_back_whole_and_the_connection_is_reused() -> None:
    async with raw_server(answering(JSON, JSON, JSON)) as (url, connections):
        pool = http1.Pool(url, 10, 5)
        for _ in range(3):
            answer = await pool.request("POST", "/v1/messages", [(b"x-api-key", b"k")], b"{}", 5)
            assert answer.status == 200 and answer.header("request-id") == "r1"
            assert (b"content-type", b"application/json") in answer.raw_headers
            assert await answer.read() == b'{"ok":true}'
            answer.release()
            answer.release()  # twice: still one connection in the pool, never handed out twice
            assert len(pool._idle) == 1
        assert len(connections) == 1
        pool.close()


async def test_an_answer_nobody_asked_for_is_never_taken_for_the_next_one() -> None:
    forged = b'HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"forged!"'

    async def pushy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(JSON)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(forged)  # on the idle connection, before any second request
        await reader.read()

    async with raw_server(pushy) as (url, connections):
        pool = http1.Pool(url, 10, 5)
        assert await fetch(pool) == b'{"ok":true}'
        for _ in range(100):
            if pool._idle[0].closed:
                break
            await asyncio.sleep(0.01)
        answer = await asyncio.wait_for(pool.request("GET", "/", [], b"", 5), 5)
        assert await answer.read() == b'{"ok":true}'
        assert len(connections) == 2


async def test_chunked_and_until_close_answers_are_read_to_their_end() -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    until_close = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it"
    async with raw_server(answering(chunked, until_close, then_close=True)) as (url, connections):
        pool = http1.Pool(url, 10, 5)
        answer = await pool.request("GET", "/a", [], b"", 5)
        assert [chunk async for chunk in answer.chunks()] in ([b"abc", b"de"], [b"abcde"])
        answer.release()
        answer = await pool.request("GET", "/b", [], b"", 5)
        assert await answer.read() == b"all of it"
        answer.release()
        assert len(connections) == 1  # the chunked answer left it reusable; the second ended it


async def test_a_streamed_upload_arrives_whole_and_its_source_is_closed() -> None:
    received: list[bytes] = []

    async def upload(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"size": len(received[0])})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/files", upload)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    closed: list[bool] = []

    async def parts() -> AsyncIterator[bytes]:
        try:
            for i in range(64):
                yield bytes([i]) * 65536
        finally:
            closed.append(True)

    try:
        pool = http1.Pool(f"http://127.0.0.1:{port}", 10, 5)
        answer = await pool.request("POST", "/v1/files", [(b"content-type", b"application/octet-stream")], parts(), 10)
        assert answer.status == 200 and await answer.read() == b'{"size": 4194304}'
        answer.release()
        assert received[0] == b"".join(bytes([i]) * 65536 for i in range(64)) and closed == [True]
        pool.close()
    finally:
        await runner.cleanup()


async def test_a_large_answer_read_slowly_is_held_back_not_buffered_whole() -> None:
    size = 32 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    async with raw_server(big) as (url, _):
        pool = http1.Pool(url, 10, 5)
        answer = await pool.request("GET", "/big", [], b"", 10)
        await asyncio.sleep(0.5)  # the server writes as fast as it can meanwhile
        connection = answer._connection
        assert connection._buffered <= http1.HIGH_WATER + 1024 * 1024  # paused near the mark, not 32 MiB
        total = 0
        async for chunk in answer.chunks():
            total += len(chunk)
        assert total == size
        answer.release()


async def test_requests_past_the_cap_wait_for_a_connection_and_get_one() -> None:
    async with raw_server(answering(*[JSON] * 6)) as (url, connections):
        pool = http1.Pool(url, 1, 5)

        assert await asyncio.wait_for(asyncio.gather(*(fetch(pool) for _ in range(6))), 10) == [b'{"ok":true}'] * 6
        assert len(connections) == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with raw_server(answering(JSON, then_close=True)) as (url, connections):
        pool = http1.Pool(url, 10, 5)
        for _ in range(2):
            assert await fetch(pool) == b'{"ok":true}'
            for _ in range(100):  # until the client has seen the close
                if not pool._idle or pool._idle[0].closed:
                    break
                await asyncio.sleep(0.01)
        assert len(connections) == 2


async def test_silence_past_the_deadline_is_a_timeout_and_a_cut_answer_is_broken() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with raw_server(silent) as (url, _):
        with pytest.raises(TimeoutError):
            await http1.Pool(url, 10, 5).request("GET", "/", [], b"", 0.2)
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"
    async with raw_server(answering(cut, then_close=True)) as (url, _):
        answer = await http1.Pool(url, 10, 5).request("GET", "/", [], b"", 5)
        with pytest.raises(http1.BrokenAnswer):
            await answer.read()
        answer.release()
    async with raw_server(answering(b"SSH-2.0-OpenSSH\r\n\r\n", then_close=True)) as (url, _):
        with pytest.raises((http1.BrokenAnswer, http1.Disconnected)):
            await http1.Pool(url, 10, 5).request("GET", "/", [], b"", 5)
    async with raw_server(answering(then_close=True)) as (url, _):  # closes without a word
        with pytest.raises(http1.Disconnected):
            await http1.Pool(url, 10, 5).request("GET", "/", [], b"", 5)


async def test_the_deadline_is_silence_per_wait_and_each_request_s_own() -> None:
    async def quick_trickle_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(8):  # 0.8 s in all, never 0.3 s of silence
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await read_request(reader)  # the third request on this connection gets no answer
        await reader.read()

    async with raw_server(quick_trickle_silent) as (url, connections):
        pool = http1.Pool(url, 1, 5)
        answer = await pool.request("GET", "/quick", [], b"", 60)
        assert await answer.read() == b"ok"
        answer.release()
        # The same connection, a deadline far shorter than the last one's, met by every chunk.
        answer = await pool.request("GET", "/slow", [], b"", 0.3)
        assert await answer.read() == b"x" * 8
        answer.release()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5) as outer:
                await pool.request("GET", "/silent", [], b"", 0.2)
        assert not outer.expired()
        assert len(connections) == 1


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent() -> None:
    async with raw_server(answering(JSON)) as (url, connections):
        pool = http1.Pool(url, 10, 5)
        for name, value in ((b"x-a", b"1\r\nx-api-key: stolen"), (b"x-a\nb", b"1"), (b"x-a", b"1\r")):
            with pytest.raises(ValueError):
                await pool.request("POST", "/", [(name, value)], b"{}", 5)
        assert connections == []
    async with raw_server(answering(then_close=True)) as (url, _):
        with pytest.raises(http1.ConnectError):
            await http1.Pool(url.replace(url.rsplit(":", 1)[1], "1"), 10, 5).request("GET", "/", [], b"", 5)


async def test_tls_is_verified_against_trusted_authorities_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    async with raw_server(answering(JSON, JSON), server_context) as (url, _):
        with pytest.raises(http1.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http1.Pool(url, 10, 5).request("GET", "/", [], b"", 5)
        bundle = tmp_path / "ca.pem"
        authority.cert_pem.write_to_path(str(bundle))
        monkeypatch.setitem(os.environ, "SSL_CERT_FILE", str(bundle))
        answer = await http1.Pool(url, 10, 5).request("GET", "/", [], b"", 5)
        assert answer.status == 200 and await answer.read() == b'{"ok":true}'
        answer.release()


async def test_an_answer_before_the_upload_ends_is_the_answer() -> None:
    refusal = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(refusal)  # without reading the body
        await writer.drain()

    async def big() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * (1 << 20)

    async with raw_server(refuse) as (url, _):
        pool = http1.Pool(url, 4, 5)
        answer = await pool.request("POST", "/v1/files", [], big(), 5)
        assert answer.status == 413 and await answer.read() == b"{}"
        answer.release()
        await eventually_async(lambda: pool._open == 0)


async def test_waiting_at_the_cap_and_a_stalled_upload_end_at_their_deadlines() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n")  # a stream that goes on
        await reader.read()

    async with raw_server(hold) as (url, _):
        pool = http1.Pool(url, 1, 0.3)
        stream = await pool.request("GET", "/stream", [], b"", 30)
        with pytest.raises(TimeoutError):  # the only connection stays busy: the wait ends, not forever
            async with asyncio.timeout(10) as outer:
                await pool.request("GET", "/x", [], b"", 30)
        assert not outer.expired()  # the pool's own deadline ended it
        stream.release()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # never reads, never answers

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1024):
            yield b"x" * (1 << 20)

    async with raw_server(deaf) as (url, _):
        pool = http1.Pool(url, 4, 5)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10) as outer:
                await pool.request("POST", "/v1/files", [], endless(), 0.3)
        assert not outer.expired()
        await eventually_async(lambda: pool._open == 0)


async def test_a_connection_closing_is_never_handed_out_and_given_up_opens_are_uncounted() -> None:
    async def close_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(JSON)
        await writer.drain()

    async with raw_server(close_after_one) as (url, connections):
        pool = http1.Pool(url, 4, 5)
        assert await fetch(pool) == b'{"ok":true}'
        pool._idle[0].transport.close()  # type: ignore[union-attr]  # closing, not yet lost
        assert await fetch(pool) == b'{"ok":true}' and len(connections) == 2
        for turns in range(12):  # give up on an opening connection at every moment of its opening
            opening = asyncio.ensure_future(pool._connect())
            for _ in range(turns):
                await asyncio.sleep(0)
            opening.cancel()
            with suppress(asyncio.CancelledError):
                (await opening).close()
        pool.close()
        await eventually_async(lambda: pool._open == 0)


async def eventually_async(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)
