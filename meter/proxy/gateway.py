"""The request path as one pipeline (drawn in proxy/__init__.py): route -> auth -> prepare ->
limits -> forward -> relay -> record.

Written as a plain ASGI callable rather than a Litestar handler: the proxy must own the send
loop to relay streams unbuffered, notice a client that leaves, and record usage on every exit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meter.credentials import new_id
from meter.errors import (
    InternalError,
    MeterError,
    MethodNotAllowed,
    Overloaded,
    UpstreamTimeout,
    UpstreamUnavailable,
    send_error,
)
from meter.metrics import Metrics
from meter.proxy.auth import KeyCache
from meter.proxy.endpoints import Endpoint, Route
from meter.proxy.exchange import Exchange
from meter.proxy.forward import Upstream
from meter.proxy.gate import Gate, overloaded
from meter.proxy.handler import Answer, Handler, Services, TenantRequest, UpstreamRequest
from meter.proxy.limits import Limiter
from meter.proxy.recorder import Recorder
from meter.proxy.relay import relay_raw, relay_stream, relay_whole, send_answer
from meter.proxy.request import read_body, spool_body
from meter.server import BODY_RECEIVED, HEAD_LINES

log = logging.getLogger("meter.proxy")
# The longest an answer waits for its hold's rest to be back in Postgres (exact mode, leases.py).
GIVE_BACK_WAIT_S = 2.0


class Gateway:
    def __init__(
        self,
        keys: KeyCache,
        limiter: Limiter,
        upstream: Upstream,
        recorder: Recorder,
        gate: Gate,
        metrics: Metrics,
        max_body_bytes: int,
        body_timeout_s: float,
        drain_s: float,
        services: Services,
    ) -> None:
        self.services = services
        self.keys = keys
        self.limiter = limiter
        self.upstream = upstream
        self.recorder = recorder
        self.gate = gate
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s
        self._drain_s = drain_s

    async def handle(self, scope: Any, receive: Any, send: Any, route: Route) -> None:
        request_id = new_id("req")
        endpoint = route.endpoint
        handler = (endpoint or route.allowed[0]).handler(self.services)

        async def refuse(error: MeterError) -> None:
            await send_error(send, error, request_id, handler.error(error, request_id))

        if endpoint is None:
            allow = ", ".join(sorted({e.method for e in route.allowed}))
            await refuse(MethodNotAllowed(f"Method {scope['method']} not allowed.", {"allow": allow}))
            return
        if self.gate.full:  # shed before any work, even the key lookup
            self._metrics.shed.inc()
            await refuse(overloaded())
            return
        incoming = dict(scope["headers"])  # for lookups; the list itself is what gets forwarded
        try:
            client = scope.get("client")
            caller = await self.keys.authenticate(incoming, client[0] if client else "")
        except MeterError as error:
            self._metrics.requests.labels("unauthenticated", "other", endpoint.name, str(error.status)).inc()
            await refuse(error)
            return
        exchange = Exchange(request_id, caller, endpoint.name, endpoint.billed)
        exchange.add_head_lines = scope.get(HEAD_LINES)
        started = recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self.recorder.record(exchange)

        async def tracked_send(message: Any) -> None:
            nonlocal started
            started = True
            if message["type"] == "http.response.body" and not message.get("more_body"):
                record()  # spooled before the response completes: a kill after it loses nothing
                if exchange.giving_back is not None:
                    # Near a limit's end the rest of this request's bound goes back to Postgres
                    # before the answer completes: the caller's next request, on any process, finds it.
                    await asyncio.wait([exchange.giving_back], timeout=GIVE_BACK_WAIT_S)
            await send(message)

        self._metrics.in_flight.inc()
        entered = False
        try:
            self.gate.enter(caller.tenant_id)
            entered = True
            await self._serve(exchange, endpoint, handler, route, scope, incoming, receive, tracked_send)
        except asyncio.CancelledError:
            exchange.cancelled = True  # the server gave up on it (a shutdown past its grace period)
            raise
        except Exception as exc:
            failure = exc if isinstance(exc, MeterError) else InternalError("Internal error in meter.")
            if not isinstance(exc, MeterError):
                log.exception("request %s failed", request_id)
            exchange.status, exchange.error_type = failure.status, failure.error_type
            if not started:
                record()
                await refuse(failure)
        finally:
            if entered:
                self.gate.leave(caller.tenant_id)
            self._metrics.in_flight.dec()
            record()

    async def _serve(
        self,
        exchange: Exchange,
        endpoint: Endpoint,
        handler: Handler,
        route: Route,
        scope: Any,
        incoming: dict[bytes, bytes],
        receive: Any,
        send: Any,
    ) -> None:
        limit = endpoint.body_limit or self._max_body_bytes
        body, spool = b"", None
        received = scope.get(BODY_RECEIVED, False)
        if endpoint.spooled:
            spool = await spool_body(incoming, receive, limit, self._body_timeout_s, received)
        else:
            body = await read_body(incoming, receive, limit, self._body_timeout_s, received)
        request = TenantRequest(
            method=scope["method"],
            path=route.path,
            params=route.params,
            query=scope["query_string"],
            headers=incoming,
            forward_headers=self.upstream.request_headers(scope["headers"]),
            body=body,
            spool=spool,
        )
        call: UpstreamRequest | Answer | None = None
        try:
            call = await handler.prepare(exchange, request)
        finally:
            if spool is not None and (not isinstance(call, UpstreamRequest) or call.stream is None):
                spool.close()  # not handed on to the upstream, which closes it when sent
        if not self.recorder.ledger.accepting:
            raise cannot_record()
        await self.limiter.reserve(exchange)
        if isinstance(call, Answer):
            if call.deferred is not None:
                call = Answer(call.status, await call.deferred())
            await send_answer(exchange, call, send)
            return
        if not self.recorder.started(exchange):
            raise cannot_record()
        try:
            upstream = await self.upstream.send(call)
        except UpstreamTimeout:
            exchange.upstream_error = "timeout"
            raise
        except UpstreamUnavailable:
            exchange.upstream_error = "unreachable"
            raise
        exchange.status = upstream.status_code
        exchange.upstream_request_id = upstream.header("request-id") or None
        is_sse = upstream.header("content-type").startswith("text/event-stream")
        # An event stream is metered as one, whatever the request said.
        if upstream.status_code == 200 and is_sse:
            exchange.stream = True
            drain = self.gate.drain_permit(exchange.caller.tenant_id)
            await relay_stream(exchange, upstream, receive, send, self._drain_s, drain, handler.stream())
        elif handler.passthrough and upstream.status_code == 200:
            await relay_raw(exchange, upstream, send)
        else:
            await relay_whole(exchange, upstream, send, handler.answer)


def cannot_record() -> Overloaded:
    """The ledger cannot take more (its backlog or spool is full, or the spool's disk fails)."""
    return Overloaded("meter cannot record usage right now; try again shortly.", {"retry-after": "1"})
