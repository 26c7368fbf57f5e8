"""The tenant-facing routes, Anthropic's paths (and OpenAI's chat completions): an ASGI app in
front of Litestar that hands these requests straight to the gateway, and everything else (admin,
health, metrics, unknown paths) to Litestar. The proxy path skips Litestar's router and
middleware: it renders its own errors and owns its send loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meter.openai_compat.endpoint import ChatCompletions
from meter.proxy.dialect import Dialect
from meter.proxy.gateway import Gateway

# path -> (endpoint name recorded in the ledger, the one method the path answers)
ROUTES = {
    "/v1/messages": ("messages", "POST"),
    "/v1/messages/count_tokens": ("count_tokens", "POST"),
    "/v1/models": ("models", "GET"),
    "/v1/chat/completions": ("chat.completions", "POST"),
}
MODELS_PREFIX = "/v1/models/"  # /v1/models/{id}
# Endpoints that speak another API than Anthropic's: a new translator for every request.
DIALECTS: dict[str, Callable[[], Dialect]] = {"chat.completions": ChatCompletions}


class ProxyRoutes:
    def __init__(self, app: Any, gateway: Gateway) -> None:
        self._app = app
        self._gateway = gateway

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"].rstrip("/")
            route = ROUTES.get(path) or (ROUTES["/v1/models"] if path.startswith(MODELS_PREFIX) else None)
            if route is not None:
                endpoint, method = route
                dialect = DIALECTS.get(endpoint)
                await self._gateway.handle(scope, receive, send, endpoint, method, dialect() if dialect else None)
                return
        await self._app(scope, receive, send)
