"""The demo upstream's aiohttp application: routes, request checks and response writing.

Handlers stay thin: token counting, reply building, usage, wire encoding, stream writing and the
Admin API's reports live in their own modules.
The per-request path avoids middlewares and app-dict lookups because this server is the upstream
in benchmarks and must not be the bottleneck.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from meter.upstream_demo import models, wire
from meter.upstream_demo.admin import AdminApi
from meter.upstream_demo.batches import DemoBatches, base_of
from meter.upstream_demo.checks import validate_messages_body
from meter.upstream_demo.config import DemoConfig
from meter.upstream_demo.controls import Controls, read_controls
from meter.upstream_demo.errors import DemoError, invalid_request
from meter.upstream_demo.files import DemoFiles
from meter.upstream_demo.record import Record
from meter.upstream_demo.replies import Reply, build_reply
from meter.upstream_demo.responses import error_response, json_response
from meter.upstream_demo.streaming import write_frames
from meter.upstream_demo.tokens import count_input_tokens
from meter.upstream_demo.usage import Usage, asks_for_1h_cache, reply_usage

SEEN_MAX = 100_000
# Anthropic's body caps: Messages and count_tokens, and batch creation.
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_BATCH_BYTES = 256 * 1024 * 1024
# A failing stream (`x-demo-error: midstream|drop`) sends this many content deltas first.
DELTAS_BEFORE_FAILURE = 2
# The numeric `x-demo-error` values: status, message and the `retry-after` a client should honour.
_STATUS_FAILURES: dict[str, tuple[int, str, dict[str, str]]] = {
    "429": (
        429,
        "Number of request tokens has exceeded your per-minute rate limit (demo)",
        {"retry-after": "7"},
    ),
    "529": (529, "Overloaded", {"retry-after": "3"}),
    "500": (500, "Internal server error", {}),
}
_SSE_HEADERS = {"Content-Type": wire.SSE_CONTENT_TYPE, "Cache-Control": "no-cache"}


class DemoUpstream:
    """The handlers, bound to one config and holding the last /v1 request for `/_demo/last-request`."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        # (method, path, query string, headers, body) of the latest /v1 request; hashed only on demand.
        self._last: tuple[str, str, str, CIMultiDictProxy[str], bytes] | None = None
        # Every request's method and raw path, in order (the newest SEEN_MAX), for `/_demo/seen`:
        # tests check that nothing but allowed paths ever reached the upstream.
        self._seen: deque[tuple[str, str]] = deque(maxlen=SEEN_MAX)
        # What was answered, for the Admin API's usage and cost reports.
        self.record = Record()
        self.admin = AdminApi(self.record, config.admin_api_key, self._seen)
        self.batches = DemoBatches(config, self.record)
        self.files = DemoFiles()

    async def _read(self, request: web.Request) -> bytes:
        self._seen.append((request.method, request.raw_path))
        # Anthropic's caps: 256 MB to create a batch, 32 MB for everything else.
        cap = MAX_BATCH_BYTES if request.path == "/v1/messages/batches" else MAX_BODY_BYTES
        try:
            if (request.content_length or 0) > cap:
                raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=request.content_length or 0)
            body = await request.read()
            if len(body) > cap:
                raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=len(body))
        except web.HTTPRequestEntityTooLarge:
            self._last = (request.method, request.path, request.query_string, request.headers, b"")
            raise DemoError(413, "Request exceeds the maximum allowed number of bytes.") from None
        self._last = (request.method, request.path, request.query_string, request.headers, body)
        return body

    def _authorize(self, request: web.Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        headers = request.headers
        if headers.get("x-api-key") == key or headers.get("authorization") == "Bearer " + key:
            return
        raise DemoError(401, "invalid x-api-key")

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        raw = await self._read(request)
        self._authorize(request)
        if "anthropic-version" not in request.headers:
            raise invalid_request("anthropic-version: header is required")
        try:
            body = json.loads(raw)
        except ValueError:
            raise invalid_request("There was an error parsing the body: invalid JSON") from None
        if not isinstance(body, dict):
            raise invalid_request("The request body must be a JSON object")
        return body

    # POST /v1/messages

    async def messages(self, request: web.Request) -> web.StreamResponse:
        request_id = wire.new_request_id()
        answered_at = time.time()
        try:
            body = await self._json_body(request)
            model, max_tokens = validate_messages_body(body)
            controls = read_controls(request.headers, self.config)
            stream = body.get("stream") is True
            if not stream:
                if controls.failure == "midstream":
                    raise invalid_request("x-demo-error: midstream applies to streaming requests only")
                if controls.cache_write_late:
                    raise invalid_request("x-demo-cache-write-late applies to streaming requests only")
            if controls.latency_s > 0:
                await asyncio.sleep(controls.latency_s)
            if controls.failure in _STATUS_FAILURES:
                status, message, headers = _STATUS_FAILURES[controls.failure]
                raise DemoError(status, message, headers)
        except DemoError as error:
            return error_response(error, request_id)

        reply = build_reply(body, controls.output_tokens, max_tokens)
        usage = reply_usage(body, controls, count_input_tokens(body), reply.output_tokens)
        if controls.failure is None:
            # Billed as answered: a whole reply is billed even if its client stops reading.
            late_1h = controls.cache_write_late > 0 and asks_for_1h_cache(body)
            self.record.add(answered_at, model, usage, late_1h)
        if stream:
            return await self._stream(request, request_id, model, reply, usage, controls)
        if controls.failure == "drop":
            return _drop(request)
        answer = json_response(wire.message_body(wire.new_message_id(), model, reply, usage), request_id)
        if controls.failure == "truncate":
            return await _truncate(request, answer)
        return answer

    async def _stream(
        self,
        request: web.Request,
        request_id: str,
        model: str,
        reply: Reply,
        usage: Usage,
        controls: Controls,
    ) -> web.StreamResponse:
        frames = wire.stream_frames(wire.new_message_id(), model, reply, usage)
        if controls.failure is not None:
            frames = _until_failure(frames)
        response = web.StreamResponse(headers={**_SSE_HEADERS, "request-id": request_id, **wire.organization_headers()})
        await response.prepare(request)
        error = wire.error_frame("overloaded_error", "Overloaded") if controls.failure == "midstream" else None
        await write_frames(
            response, frames, controls.tokens_per_second, self.config.ping_interval_s, controls.split_seed, error
        )
        if controls.failure in ("drop", "truncate"):
            return _drop(request, response)
        await response.write_eof()
        return response

    # POST /v1/messages/count_tokens

    async def count_tokens(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        try:
            body = await self._json_body(request)
            for field in ("model", "messages"):
                if field not in body:
                    raise invalid_request(f"{field}: Field required")
        except DemoError as error:
            return error_response(error, request_id)
        return json_response(wire.dumps({"input_tokens": count_input_tokens(body)}), request_id)

    # GET /v1/models and /v1/models/{model_id}

    async def list_models(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        try:
            await self._read(request)
            self._authorize(request)
            query = request.query
            page = models.list_models(query.get("limit"), query.get("after_id"), query.get("before_id"))
        except DemoError as error:
            return error_response(error, request_id)
        return json_response(wire.dumps(page), request_id)

    async def get_model(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        try:
            await self._read(request)
            self._authorize(request)
            model = models.get_model(request.match_info["model_id"])
        except DemoError as error:
            return error_response(error, request_id)
        return json_response(wire.dumps(model), request_id)

    # Message Batches: /v1/messages/batches...

    async def batches_api(self, request: web.Request) -> web.Response:
        """Every batch endpoint: the route says which (Anthropic's errors for bad ids and states)."""
        request_id = wire.new_request_id()
        try:
            batch_id, action = request.match_info.get("batch_id"), request.match_info.get("action")
            if request.method == "POST" and batch_id is None:
                body = await self._json_body(request)
                return json_response(self.batches.create(body, request.headers, base_of(request)), request_id)
            await self._read(request)
            self._authorize(request)
            if batch_id is None:
                return json_response(self.batches.page(request.query, base_of(request)), request_id)
            if action == "cancel" and request.method == "POST":
                return json_response(self.batches.cancel(batch_id, base_of(request)), request_id)
            if action == "results" and request.method == "GET":
                results = self.batches.results(batch_id)
                headers = {"request-id": request_id, **wire.organization_headers()}
                return web.Response(body=results, content_type="application/binary", headers=headers)
            if action is None and request.method == "DELETE":
                return json_response(self.batches.delete(batch_id), request_id)
            if action is None and request.method == "GET":
                return json_response(
                    wire.dumps(self.batches.find(batch_id).view(base_of(request), time.time())), request_id
                )
            raise DemoError(404, "The requested resource could not be found.")
        except DemoError as error:
            return error_response(error, request_id)

    # Files (beta): /v1/files...

    async def files_api(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        try:
            self._seen.append((request.method, request.raw_path))
            self._authorize(request)
            file_id, action = request.match_info.get("file_id"), request.match_info.get("action")
            if file_id is None and request.method == "POST":
                return json_response(await self.files.upload(request), request_id)
            if file_id is None and request.method == "GET":
                return json_response(self.files.page(request.query), request_id)
            if file_id is not None and action == "content" and request.method == "GET":
                stored = self.files.find(file_id)
                headers = {"request-id": request_id, **wire.organization_headers()}
                return web.Response(body=stored.content, content_type=stored.meta["mime_type"], headers=headers)
            if file_id is not None and action is None and request.method == "GET":
                return json_response(wire.dumps(self.files.find(file_id).meta), request_id)
            if file_id is not None and action is None and request.method == "DELETE":
                return json_response(self.files.delete(file_id), request_id)
            raise DemoError(404, "The requested resource could not be found.")
        except DemoError as error:
            return error_response(error, request_id)

    # Anything else

    async def not_found(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        if request.path.startswith("/v1/"):
            try:
                await self._read(request)
            except DemoError as error:
                return error_response(error, request_id)
        else:
            self._seen.append((request.method, request.raw_path))
        return error_response(DemoError(404, "The requested resource could not be found."), request_id)

    # GET /_demo/seen

    async def seen(self, request: web.Request) -> web.Response:
        paths = [{"method": method, "path": path} for method, path in self._seen]
        return json_response(wire.dumps({"requests": paths}), wire.new_request_id())

    # GET /_demo/last-request

    async def last_request(self, request: web.Request) -> web.Response:
        request_id = wire.new_request_id()
        if self._last is None:
            return error_response(DemoError(404, "No /v1 request has been received yet."), request_id)
        method, path, query, headers, body = self._last
        seen: dict[str, str] = {}
        for name, value in headers.items():
            key = name.lower()
            # A repeated header (e.g. anthropic-beta) reads as one comma-joined value, as HTTP allows.
            seen[key] = f"{seen[key]}, {value}" if key in seen else value
        payload = {
            "method": method,
            "path": path,
            "query": query,
            "headers": seen,
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        return json_response(wire.dumps(payload), request_id)


def _until_failure(frames: list[wire.Frame]) -> list[wire.Frame]:
    """The frames a failing stream sends: message_start onwards, cut after a few deltas and
    always before message_delta, so the client never sees final usage."""
    kept: list[wire.Frame] = []
    deltas = 0
    for item in frames[:-2]:  # the last two are message_delta and message_stop
        if item.is_delta:
            if deltas == DELTAS_BEFORE_FAILURE:
                break
            deltas += 1
        kept.append(item)
    return kept


def _drop(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Abort the TCP connection with no further byte, as a crashed upstream or a cut network would."""
    if request.transport is not None:
        request.transport.abort()
    return response if response is not None else web.Response()


async def _truncate(request: web.Request, answer: web.Response) -> web.StreamResponse:
    """Send `answer`'s headers (its full content-length) and half its body, then cut the connection."""
    body = answer.body if isinstance(answer.body, bytes) else b""
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    return _drop(request, response)


def create_demo_app(config: DemoConfig) -> web.Application:
    """The demo upstream application; every setting comes from `config`."""
    upstream = DemoUpstream(config)
    app = web.Application(client_max_size=MAX_BATCH_BYTES)
    router = app.router
    router.add_post("/v1/messages", upstream.messages)
    router.add_post("/v1/messages/count_tokens", upstream.count_tokens)
    router.add_get("/v1/models", upstream.list_models, allow_head=False)
    router.add_get("/v1/models/{model_id}", upstream.get_model, allow_head=False)
    router.add_get("/_demo/last-request", upstream.last_request, allow_head=False)
    router.add_get("/_demo/seen", upstream.seen, allow_head=False)
    for path in ("/v1/messages/batches", "/v1/messages/batches/{batch_id}", "/v1/messages/batches/{batch_id}/{action}"):
        router.add_route("*", path, upstream.batches_api)
    for path in ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/{action}"):
        router.add_route("*", path, upstream.files_api)
    admin = upstream.admin
    router.add_get("/v1/organizations/usage_report/messages", admin.usage_report, allow_head=False)
    router.add_get("/v1/organizations/cost_report", admin.cost_report, allow_head=False)
    router.add_get("/_demo/report-adjustments", admin.list_adjustments, allow_head=False)
    router.add_post("/_demo/report-adjustments", admin.add_adjustment)
    router.add_delete("/_demo/report-adjustments", admin.clear_adjustments)
    # Last, so it only catches what no route above matched: Anthropic answers those with JSON 404s.
    router.add_route("*", "/{tail:.*}", upstream.not_found)
    return app


def run_demo_upstream(host: str, port: int, config: DemoConfig) -> None:
    """Serve the demo upstream until interrupted (blocking). Uses uvloop when it is installed."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop
    except ImportError:
        pass
    else:
        loop = uvloop.new_event_loop()
    web.run_app(
        create_demo_app(config),
        host=host,
        port=port,
        access_log=None,  # a log line per request would cost more than the request itself
        # Hundreds of clients connect at once in benchmarks; the default backlog of 128 drops some.
        backlog=4096,
        # run_app calls this once the socket is listening, so the line means "ready".
        print=lambda _banner: print(f"demo upstream listening on http://{host}:{port}", flush=True),
        loop=loop,
    )
