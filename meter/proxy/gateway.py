"""The request path, stage by stage: authenticate -> read and check the request -> forward ->
relay the answer while reading its usage -> record one ledger row.

Written as a plain ASGI callable rather than a Litestar handler: the proxy must own the send
loop to relay streams unbuffered, notice a client that leaves, and record usage on every exit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from meter.credentials import new_id
from meter.errors import (
    InternalError,
    InvalidRequest,
    MeterError,
    MethodNotAllowed,
    Overloaded,
    PermissionDenied,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    send_error,
)
from meter.metrics import Metrics
from meter.proxy.auth import KeyCache
from meter.proxy.dialect import Dialect
from meter.proxy.forward import Upstream
from meter.proxy.limits import Limiter
from meter.proxy.models import models_answer
from meter.proxy.recorder import Exchange, Recorder
from meter.proxy.relay import relay_stream, relay_whole

log = logging.getLogger("meter.proxy")

# Sent upstream for clients of another dialect, which do not send Anthropic's version header.
ANTHROPIC_VERSION = b"2023-06-01"
# Past this, a body is not even read to the end: the connection is closed after the 413.
DISCARD_LIMIT = 512 * 1024 * 1024


class _RequestFields(msgspec.Struct):
    """The only fields meter reads from a request body; the rest is forwarded untouched."""

    model: Any = None
    stream: Any = None
    max_tokens: Any = None


_decode_fields = msgspec.json.Decoder(_RequestFields).decode


class Gateway:
    def __init__(
        self,
        keys: KeyCache,
        limiter: Limiter,
        upstream: Upstream,
        recorder: Recorder,
        metrics: Metrics,
        max_body_bytes: int,
        drain_s: float,
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.upstream = upstream
        self.recorder = recorder
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._drain_s = drain_s

    async def handle(
        self, scope: Any, receive: Any, send: Any, endpoint: str, method: str, dialect: Dialect | None = None
    ) -> None:
        request_id = new_id("req")

        async def refuse(error: MeterError) -> None:
            await send_error(send, error, request_id, dialect.error(error, request_id) if dialect else None)

        if scope["method"] != method:
            await refuse(MethodNotAllowed(f"Method {scope['method']} not allowed.", {"allow": method}))
            return
        incoming = dict(scope["headers"])  # for lookups; the list itself is what gets forwarded
        try:
            caller = await self.keys.authenticate(incoming)
        except MeterError as error:
            self._metrics.requests.labels("unauthenticated", "other", endpoint, str(error.status)).inc()
            await refuse(error)
            return
        exchange = Exchange(request_id, caller, endpoint)
        started = False

        async def tracked_send(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        self._metrics.in_flight.inc()
        try:
            await self._serve(exchange, scope, incoming, receive, tracked_send, dialect)
        except Exception as exc:
            failure = exc if isinstance(exc, MeterError) else InternalError("Internal error in meter.")
            if not isinstance(exc, MeterError):
                log.exception("request %s failed", request_id)
            exchange.status, exchange.error_type = failure.status, failure.error_type
            if not started:
                await refuse(failure)
        finally:
            self._metrics.in_flight.dec()
            self.recorder.record(exchange)

    async def _serve(
        self,
        exchange: Exchange,
        scope: Any,
        incoming: dict[bytes, bytes],
        receive: Any,
        send: Any,
        dialect: Dialect | None,
    ) -> None:
        body = await self._read_body(incoming, receive)
        headers = self.upstream.request_headers(scope["headers"])
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        query = scope["query_string"]
        if dialect is not None:
            body, path, query = dialect.request(body), dialect.upstream_path, b""
            headers.append((b"anthropic-version", ANTHROPIC_VERSION))
        max_tokens = self._read_fields(exchange, body) if body else 0
        if not self.recorder.ledger.accepting:
            raise Overloaded("meter cannot record usage right now; try again shortly.")
        rewrite: Callable[[int, bytes], bytes] | None = dialect.answer if dialect is not None else None
        if exchange.endpoint == "models":
            # The documented rule: a models request without Anthropic's version header is an OpenAI client's.
            openai_client = b"anthropic-version" not in incoming
            if openai_client:
                headers.append((b"anthropic-version", ANTHROPIC_VERSION))
            rewrite = models_answer(exchange.caller.allowed_models, path, openai_client)
        else:
            await self.limiter.reserve(exchange, body, max_tokens)
        try:
            upstream = await self.upstream.send(scope["method"], path, query, headers, body)
        except UpstreamTimeout:
            exchange.upstream_error = "timeout"
            raise
        except UpstreamUnavailable:
            exchange.upstream_error = "unreachable"
            raise
        exchange.status = upstream.status_code
        exchange.upstream_request_id = upstream.headers.get("request-id")
        is_sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        if exchange.stream and upstream.status_code == 200 and is_sse:
            translator = dialect.stream() if dialect is not None else None
            await relay_stream(exchange, upstream, receive, send, self._drain_s, translator)
        else:
            await relay_whole(exchange, upstream, send, metered=exchange.billed, rewrite=rewrite)

    def _read_fields(self, exchange: Exchange, body: bytes) -> int:
        """Check the fields meter needs; return `max_tokens` (0 when absent: the upstream refuses it)."""
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
        return max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0

    async def _read_body(self, incoming: dict[bytes, bytes], receive: Any) -> bytes:
        """The whole request body, or RequestTooLarge once it is past the limit. An oversized body
        is still read (and discarded) so the client gets the 413 instead of a broken pipe."""
        declared = incoming.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > DISCARD_LIMIT:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("The client closed the connection before sending the whole body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self._max_body_bytes:
                chunks.append(chunk)
            elif size > DISCARD_LIMIT:
                raise self._too_large()
            if not message.get("more_body", False):
                break
        if size > self._max_body_bytes:
            raise self._too_large()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(f"Request exceeds the maximum size of {self._max_body_bytes} bytes.")
