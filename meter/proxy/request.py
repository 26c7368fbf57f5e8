"""Reading the tenant's request: the body, within its size cap, and the few fields meter relies on
(`model`, `stream`, `max_tokens`). Everything else in the body is forwarded untouched."""

from __future__ import annotations

from typing import Any

import msgspec

from meter.errors import InvalidRequest, PermissionDenied, RequestTooLarge
from meter.proxy.exchange import Exchange

# Past this, a body is not even read to the end: the connection is closed after the 413.
DISCARD_LIMIT = 512 * 1024 * 1024


class _Fields(msgspec.Struct):
    model: Any = None
    stream: Any = None
    max_tokens: Any = None


_decode_fields = msgspec.json.Decoder(_Fields).decode


async def read_body(headers: dict[bytes, bytes], receive: Any, limit: int) -> bytes:
    """The whole request body, or RequestTooLarge once it is past `limit`. An oversized body is
    still read (and discarded) so the client gets the 413 instead of a broken pipe."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > DISCARD_LIMIT:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client closed the connection before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DISCARD_LIMIT:
            raise _too_large(limit)
        if not message.get("more_body", False):
            break
    if size > limit:
        raise _too_large(limit)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request exceeds the maximum size of {limit} bytes.")


def read_fields(exchange: Exchange, body: bytes) -> None:
    """Check the fields meter needs and note them on `exchange`: the model (which the key must be
    allowed to use), whether the call streams, and `max_tokens` (0 when absent: the upstream
    refuses that itself)."""
    try:
        fields = _decode_fields(body)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(fields.model, str) or not fields.model:
        raise InvalidRequest("model: Field required")
    exchange.model = fields.model
    exchange.stream = exchange.billed and fields.stream is True
    allowed = exchange.caller.allowed_models
    if allowed is not None and fields.model not in allowed:
        raise PermissionDenied(f"This API key is not allowed to use model {fields.model!r}.")
    max_tokens = fields.max_tokens
    exchange.max_tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
