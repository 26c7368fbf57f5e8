"""The tenant-facing routes, Anthropic's paths: each hands the raw request to the gateway."""

# No `from __future__ import annotations`: Litestar reads the handler annotations at registration.
from collections.abc import Callable

from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from meter.openai_compat.endpoint import ChatCompletions
from meter.proxy.dialect import Dialect
from meter.proxy.gateway import Gateway

# (path, endpoint name recorded in the ledger, the one method the path answers). /v1/models is a
# mount so that it also answers /v1/models/{id}: Litestar's ASGI handlers take no path parameters.
ROUTES = (
    ("/v1/messages", "messages", "POST"),
    ("/v1/messages/count_tokens", "count_tokens", "POST"),
    ("/v1/models", "models", "GET"),
    ("/v1/chat/completions", "chat.completions", "POST"),
)
# Endpoints that speak another API than Anthropic's: a new translator for every request.
DIALECTS: dict[str, Callable[[], Dialect]] = {"chat.completions": ChatCompletions}


def proxy_routes(gateway: Gateway) -> list[ASGIRouteHandler]:
    return [_route(gateway, path, endpoint, method) for path, endpoint, method in ROUTES]


def _route(gateway: Gateway, path: str, endpoint: str, method: str) -> ASGIRouteHandler:
    dialect = DIALECTS.get(endpoint)

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await gateway.handle(scope, receive, send, endpoint, method, dialect() if dialect else None)

    return asgi(path, copy_scope=True, is_mount=endpoint == "models", name=f"proxy:{path}")(handler)
