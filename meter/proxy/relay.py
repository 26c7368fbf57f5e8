"""Stage 4 of the request path: the upstream's answer goes back to the client while a copy is read
for usage.

A JSON answer is relayed whole. A stream is relayed chunk by chunk as it arrives, untouched, and
teed into the SSE usage reader. If the client leaves mid-stream, meter keeps reading the upstream
for up to `drain_s` to learn the final usage; if the upstream breaks mid-stream, the client gets
an `event: error` frame (the 200 is already sent) and the row is flagged partial.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from meter.errors import UpstreamUnavailable
from meter.proxy.exchange import Exchange
from meter.proxy.forward import UpstreamLost, UpstreamResponse, response_headers
from meter.proxy.gate import DrainPermit
from meter.proxy.handler import Answer, StreamTranslator
from meter.proxy.stream_usage import StreamUsageReader


class _AnswerFields(msgspec.Struct):
    """What meter reads of a JSON answer; the rest (the content) is skipped, not built."""

    usage: Any = None
    stop_reason: Any = None
    model: Any = None
    error: Any = None


_decode = msgspec.json.Decoder(_AnswerFields).decode
UPSTREAM_LOST = "The upstream connection was lost mid-stream."
UPSTREAM_LOST_FRAME = (
    b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"' + UPSTREAM_LOST.encode() + b'"}}\n\n'
)


def _start(
    exchange: Exchange, upstream: UpstreamResponse, status: int | None = None, length: int | None = None
) -> dict[str, Any]:
    headers = response_headers(upstream.raw_headers)
    headers.append((b"x-meter-request-id", exchange.request_id.encode()))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    _add_ratelimit_lines(exchange, headers)
    return {"type": "http.response.start", "status": status or upstream.status_code, "headers": headers}


def _add_ratelimit_lines(exchange: Exchange, headers: list[tuple[bytes, bytes]]) -> None:
    """The limits stage's rate-limit lines, straight into the head where meter's server takes them
    (the response start must be sent next), else as `headers`."""
    lines = exchange.ratelimit_lines
    if not lines:
        return
    if exchange.add_head_lines is not None:
        exchange.add_head_lines(lines)
    else:
        headers.extend((name, value) for name, _, value in (line.partition(b": ") for line in lines.splitlines()))


async def relay_whole(
    exchange: Exchange,
    upstream: UpstreamResponse,
    send: Any,
    rewrite: Callable[[int, bytes], Awaitable[tuple[int, bytes]]],
) -> None:
    """Relay a whole answer as `rewrite(status, body)` makes it for the tenant (another dialect,
    hidden models); usage is read from the upstream's own body."""
    try:
        body = await upstream.aread()
    except UpstreamLost as exc:
        exchange.upstream_error = "upstream_disconnected"
        raise UpstreamUnavailable("The upstream API connection was lost before its answer was complete.") from exc
    finally:
        await upstream.aclose()
    status, answer = await rewrite(upstream.status_code, body)
    exchange.status = status
    exchange.first_byte()
    # The usage is read before the answer completes: its row is spooled with the last send.
    if exchange.billed or upstream.status_code >= 400:
        _read_json_answer(exchange, upstream.status_code, body)
    if upstream.status_code == 429 or upstream.status_code >= 500:
        exchange.upstream_error = exchange.error_type or f"http_{upstream.status_code}"
    await send(_start(exchange, upstream, status, len(answer)))
    await send({"type": "http.response.body", "body": answer})


async def relay_raw(exchange: Exchange, upstream: UpstreamResponse, send: Any) -> None:
    """Stream an answer through untouched, chunk by chunk (results files, downloads): never held whole."""
    try:
        await send(_start(exchange, upstream))
        async for chunk in upstream.aiter_raw():
            exchange.first_byte()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except UpstreamLost:
        exchange.error_type = exchange.upstream_error = "upstream_disconnected"
    finally:
        await upstream.aclose()


async def send_answer(exchange: Exchange, answer: Answer, send: Any) -> None:
    """meter's own answer (no upstream call): JSON, with the request id and rate-limit headers."""
    exchange.status = answer.status
    exchange.first_byte()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(answer.body)).encode()),
        (b"request-id", exchange.request_id.encode()),
        (b"x-meter-request-id", exchange.request_id.encode()),
    ]
    _add_ratelimit_lines(exchange, headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def _read_json_answer(exchange: Exchange, status: int, body: bytes) -> None:
    try:
        answer = _decode(body)
    except msgspec.DecodeError:  # not JSON, or not an object
        return
    if status == 200:
        exchange.usage.update(answer.usage)
        exchange.stop_reason = answer.stop_reason
        exchange.response_model = answer.model if isinstance(answer.model, str) else None
    else:
        error = answer.error
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            exchange.error_type = error["type"]


async def relay_stream(
    exchange: Exchange,
    upstream: UpstreamResponse,
    receive: Any,
    send: Any,
    drain_s: float,
    drain: DrainPermit,
    translator: StreamTranslator | None = None,
) -> None:
    """Relay a stream as it arrives; a `translator` turns it into another dialect's stream."""
    reader = StreamUsageReader()
    client_gone = asyncio.Event()
    relaying = True
    deadline = asyncio.timeout(None)

    def start_drain_deadline(_: object) -> None:
        # Once the client is gone, the rest of the upstream read gets `drain_s`, no more, and only
        # while the tenant has few such drains: past them the stream stops here, flagged partial.
        if relaying and client_gone.is_set():
            deadline.reschedule(asyncio.get_running_loop().time() + (drain_s if drain.take() else 0))

    listener = asyncio.create_task(_wait_for_disconnect(receive, client_gone))
    listener.add_done_callback(start_drain_deadline)
    try:
        async with deadline:
            await send(_start(exchange, upstream))
            async for chunk in upstream.aiter_raw():
                exchange.first_byte()
                reader.feed(chunk)
                if translator is not None:
                    chunk = translator.feed(chunk)
                if chunk and not client_gone.is_set():
                    try:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    except OSError:  # servers that raise instead of ignoring sends to a gone client
                        client_gone.set()
                        start_drain_deadline(None)
    except TimeoutError:
        exchange.error_type = "client_disconnected"
    except UpstreamLost:
        exchange.error_type = "upstream_disconnected"
        if not client_gone.is_set():
            lost = translator.fail(UPSTREAM_LOST) if translator is not None else UPSTREAM_LOST_FRAME
            await send({"type": "http.response.body", "body": lost, "more_body": True})
            translator = None
    finally:
        relaying = False
        listener.cancel()
        drain.release()
        # Also when cancelled (a shutdown past its grace period): what the stream saw is billed.
        _take_usage(exchange, reader)
        await upstream.aclose()
    if not client_gone.is_set():
        tail = translator.finish() if translator is not None else b""
        await send({"type": "http.response.body", "body": tail})


def _take_usage(exchange: Exchange, reader: StreamUsageReader) -> None:
    exchange.usage, exchange.partial = reader.final_usage()
    exchange.stop_reason = reader.stop_reason
    exchange.response_model = reader.model
    exchange.error_type = reader.error_type or exchange.error_type
    if reader.error_type or exchange.error_type == "upstream_disconnected":
        exchange.upstream_error = exchange.error_type


async def _wait_for_disconnect(receive: Any, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
