"""CORS for the tenant endpoints, off unless the operator lists origins (METER_CORS_ORIGINS), so that
a browser app (the TypeScript SDK with `dangerouslyAllowBrowser`) can call meter directly.

A preflight (`OPTIONS` with `Access-Control-Request-Method`) from a listed origin is answered here,
without authentication, as browsers send it without credentials; the real request then carries its
tenant key as usual and its answer is marked readable by that origin.
"""

from __future__ import annotations

from typing import Any

# What a browser may read of an answer besides the simple headers: ids and rate-limit state.
EXPOSED = (
    b"request-id, x-meter-request-id, retry-after, x-should-retry, anthropic-ratelimit-requests-limit, "
    b"anthropic-ratelimit-requests-remaining, anthropic-ratelimit-requests-reset, "
    b"anthropic-ratelimit-tokens-limit, anthropic-ratelimit-tokens-remaining, anthropic-ratelimit-tokens-reset"
)
MAX_AGE_S = b"600"


class Cors:
    def __init__(self, origins: str) -> None:
        listed = [origin.strip() for origin in origins.split(",") if origin.strip()]
        self._any = "*" in listed
        self._origins = frozenset(origin.encode() for origin in listed)

    @property
    def enabled(self) -> bool:
        return self._any or bool(self._origins)

    def allowed(self, origin: bytes | None) -> bool:
        return origin is not None and (self._any or origin in self._origins)

    async def preflight(self, send: Any, origin: bytes, methods: list[str], requested: bytes) -> None:
        headers = [
            *_origin_headers(origin),
            (b"access-control-allow-methods", ", ".join(methods).encode()),
            (b"access-control-allow-headers", requested or b"content-type"),
            (b"access-control-max-age", MAX_AGE_S),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def wrap(self, send: Any, origin: bytes) -> Any:
        """`send` that marks the answer readable by `origin`."""
        extra = [*_origin_headers(origin), (b"access-control-expose-headers", EXPOSED)]

        async def cors_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return cors_send


def _origin_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin), (b"vary", b"origin")]
