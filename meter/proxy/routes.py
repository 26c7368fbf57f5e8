"""The ASGI app in front of Litestar: a request whose path is in the endpoint table goes straight to
the gateway; everything else (admin, health, metrics) to Litestar. A path that no endpoint may
have (dot segments, encoded slashes, ...) and any other path under /v1/ is a 404 here, for every
method, so it reaches neither the upstream nor anything else. The proxy path skips Litestar's
router and middleware: it renders its own errors and owns its send loop."""

from __future__ import annotations

from typing import Any

from meter.credentials import new_id
from meter.errors import NotFound, send_error
from meter.proxy.cors import Cors
from meter.proxy.endpoints import path_segments, route
from meter.proxy.gateway import Gateway

NOT_FOUND = NotFound("Not found: no such endpoint.")


class ProxyRoutes:
    def __init__(self, app: Any, gateway: Gateway, cors: Cors) -> None:
        self._app = app
        self._gateway = gateway
        self._cors = cors

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            segments = path_segments(raw_path.decode("latin-1"))
            found = route(scope["method"], segments) if segments is not None else None
            if found is not None:
                if self._cors.enabled:
                    headers = dict(scope["headers"])
                    origin = headers.get(b"origin")
                    if origin is not None and self._cors.allowed(origin):
                        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                            methods = sorted({endpoint.method for endpoint in found.allowed})
                            requested = headers.get(b"access-control-request-headers", b"")
                            await self._cors.preflight(send, origin, methods, requested)
                            return
                        send = self._cors.wrap(send, origin)
                await self._gateway.handle(scope, receive, send, found)
                return
            if segments is None or segments[:1] == ["v1"]:
                await send_error(send, NOT_FOUND, new_id("req"))
                return
        await self._app(scope, receive, send)
