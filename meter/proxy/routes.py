"""The ASGI app in front of Litestar: a request whose path is in the endpoint table goes straight to
the gateway; everything else (admin, health, metrics, unknown paths) to Litestar. The proxy path
skips Litestar's router and middleware: it renders its own errors and owns its send loop."""

from __future__ import annotations

from typing import Any

from meter.proxy.endpoints import route
from meter.proxy.gateway import Gateway


class ProxyRoutes:
    def __init__(self, app: Any, gateway: Gateway) -> None:
        self._app = app
        self._gateway = gateway

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            found = route(scope["method"], raw_path.decode("latin-1"))
            if found is not None:
                await self._gateway.handle(scope, receive, send, found)
                return
        await self._app(scope, receive, send)
