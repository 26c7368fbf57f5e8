"""Reading the tenant's request: the body, within its size cap, parsed as a JSON object that every
parser reads alike, and the few fields meter relies on (`model`, `stream`, `max_tokens`), checked.
The body itself is forwarded untouched."""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, Any

import msgspec

from meter.errors import InvalidRequest, PermissionDenied, RequestTimeout, RequestTooLarge
from meter.proxy.estimate import RequestShape, shape_of
from meter.proxy.exchange import Exchange

# A body declared larger than this is not even discarded to its end: its connection is closed.
DISCARD_LIMIT = 512 * 1024 * 1024
# Real requests nest a few levels (a tool result in a message in the list); tool schemas a dozen.
MAX_DEPTH = 100
# A spooled body stays in memory up to this size, then moves to a temporary file; it is sent on in
# chunks of this size.
SPOOL_IN_MEMORY_BYTES = 1024 * 1024
SPOOL_CHUNK_BYTES = 64 * 1024
# Bodies this large are parsed off the event loop (a few milliseconds and more).
PARSE_INLINE_BYTES = 256 * 1024
MAX_MODEL_LENGTH = 256
# Far above any model's output, and within the 32-bit counters of the limits tables.
MAX_TOKENS = 2**31 - 1


async def read_body(
    headers: dict[bytes, bytes], receive: Any, limit: int, timeout_s: float, received: bool = False
) -> bytes:
    """The whole request body, read with a deadline of `timeout_s` between chunks (none when the
    server says it has `received` it all already).

    A body declared larger than `limit` is refused at once, before it is uploaded: the server
    discards what the client still sends, so a client that writes its whole body before reading
    still gets the 413 (past DISCARD_LIMIT the connection is closed instead). A body without a
    declared length is cut off the moment it passes `limit`, and its connection closed."""
    chunks: list[bytes] = []
    await _read_into(chunks.append, headers, receive, limit, timeout_s, received)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_into(
    sink: Callable[[bytes], object],
    headers: dict[bytes, bytes],
    receive: Any,
    limit: int,
    timeout_s: float,
    received: bool = False,
) -> None:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, close=int(declared) > DISCARD_LIMIT)
    size = 0
    if received:  # all of it is in the server's hands: one receive, which cannot wait
        size = _take(await receive(), sink, size, limit)
        if size < 0:
            return
    loop = asyncio.get_running_loop()
    # One deadline for the whole body, moved on by each chunk: `timeout_s` of silence ends it.
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            while (size := _take(await receive(), sink, size, limit)) >= 0:
                deadline.reschedule(loop.time() + timeout_s)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive: nothing for {timeout_s:g} s.") from None


def _take(message: Any, sink: Callable[[bytes], object], size: int, limit: int) -> int:
    """One ASGI message of the body into `sink`: the size read so far, or -1 at the body's end."""
    if message["type"] == "http.disconnect":
        raise InvalidRequest("The client closed the connection before sending the whole body.")
    chunk = message.get("body", b"")
    size += len(chunk)
    if size > limit:
        raise _too_large(limit, close=True)
    sink(chunk)
    return size if message.get("more_body", False) else -1


async def spool_body(
    headers: dict[bytes, bytes], receive: Any, limit: int, timeout_s: float, received: bool = False
) -> IO[bytes]:
    """The body, as `read_body` reads it, in a temporary file (kept in memory while small), rewound."""
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115
    try:
        await _read_into(spool.write, headers, receive, limit, timeout_s, received)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


async def stream_spool(spool: IO[bytes]) -> AsyncIterator[bytes]:
    """A spooled body as chunks to send upstream; the file is closed at the end."""
    try:
        while chunk := spool.read(SPOOL_CHUNK_BYTES):
            yield chunk
    finally:
        spool.close()


def _too_large(limit: int, close: bool) -> RequestTooLarge:
    headers = {"connection": "close"} if close else None
    return RequestTooLarge(f"Request exceeds the maximum size of {limit} bytes.", headers)


async def read_document(body: bytes) -> dict[str, Any]:
    """`parse_body`, in a worker thread for a large body so that other requests keep moving."""
    if len(body) < PARSE_INLINE_BYTES:
        return parse_body(body)
    return await asyncio.to_thread(parse_body, body)


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, refused (400) if meter and the upstream could read it differently
    or if it would take meter's own parsing out of bounds: not JSON, not an object, a key repeated
    in one object (which value wins differs between parsers), or nested deeper than MAX_DEPTH."""
    try:
        document = msgspec.json.decode(body)
    except RecursionError:
        raise InvalidRequest(f"The request body is nested too deeply (more than {MAX_DEPTH} levels).") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(document, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    keys, depth = _shape(document)
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"The request body is nested too deeply (more than {MAX_DEPTH} levels).")
    # The decoded objects hold at most as many keys as the text, and the text's quick count at
    # least as many: equal, nothing repeats. Otherwise the exact (slower) check decides.
    if keys != _keys_in(body) and _repeats_a_key(body):
        raise InvalidRequest("The request body repeats a key within one JSON object.")
    return document


def _repeats_a_key(body: bytes) -> bool:
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> None:
        nonlocal repeated
        repeated = repeated or len({key for key, _ in items}) != len(items)

    json.loads(body, object_pairs_hook=pairs)
    return repeated


# A quote followed by a colon: the end of every object key, and (rarely) the opening quote of a
# string that starts with a colon, so the count is never below the number of keys. Both patterns
# start with a literal, which the regex engine finds fast; a match after a backslash is not counted
# if its quote is escaped (an odd run of backslashes).
_KEY_END = re.compile(rb'"[ \t\r\n]*:')
_AFTER_BACKSLASH = re.compile(rb'\\"[ \t\r\n]*:')
_BACKSLASH = ord("\\")


def _keys_in(body: bytes) -> int:
    """At least the number of object keys in a JSON text, and nearly always exactly that."""
    keys = len(_KEY_END.findall(body))
    for match in _AFTER_BACKSLASH.finditer(body):
        quote = start = match.start() + 1
        while start > 0 and body[start - 1] == _BACKSLASH:
            start -= 1
        keys -= (quote - start) % 2
    return keys


def _shape(document: Any) -> tuple[int, int]:
    """(keys in every object, nesting depth) of a decoded document, level by level without
    recursion; only containers are visited, and the walk stops past MAX_DEPTH."""
    keys = depth = 0
    level: list[Any] = [document]
    while level and depth <= MAX_DEPTH:
        depth += 1
        below: list[Any] = []
        for node in level:
            if type(node) is dict:
                keys += len(node)
                node = node.values()
            below.extend(child for child in node if type(child) is dict or type(child) is list)
        level = below
    return keys, depth


@dataclass(frozen=True)
class Fields:
    """What meter relies on in a Messages body (checked by `check_fields`)."""

    model: str
    stream: bool
    max_tokens: int  # 0 when absent: the upstream refuses that itself
    shape: RequestShape


def check_fields(document: dict[str, Any], body_bytes: int, allowed: frozenset[str] | None) -> Fields:
    """The fields meter relies on, checked: the model (which the key must be allowed to use),
    whether the call streams, `max_tokens`, and the shape the reservation and pricing read."""
    model = document.get("model")
    if model is None:
        raise InvalidRequest("model: Field required")
    if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_LENGTH or not model.isprintable():
        raise InvalidRequest(f"model: must be a printable string of 1 to {MAX_MODEL_LENGTH} characters")
    stream = document.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: Input should be a valid boolean")
    max_tokens = document.get("max_tokens", 0)
    if max_tokens is None:
        max_tokens = 0
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 <= max_tokens <= MAX_TOKENS:
        raise InvalidRequest(f"max_tokens: Input should be an integer from 0 to {MAX_TOKENS}")
    if allowed is not None and model not in allowed:
        raise PermissionDenied(f"This API key is not allowed to use model {model!r}.")
    return Fields(model, stream is True, max_tokens, shape_of(document, body_bytes))


def read_fields(exchange: Exchange, document: dict[str, Any], body_bytes: int) -> None:
    """`check_fields`, noted on `exchange`."""
    fields = check_fields(document, body_bytes, exchange.caller.allowed_models)
    exchange.model = fields.model
    exchange.stream = exchange.billed and fields.stream
    exchange.max_tokens = fields.max_tokens
    exchange.shape = fields.shape
