"""The admin token guard: `Authorization: Bearer <admin token>` on every /admin route."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from meter.errors import AuthenticationFailed


def admin_guard(token: str) -> Guard:
    expected = token.encode()

    def guard(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
        header = connection.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
            raise AuthenticationFailed("A valid admin token is required: Authorization: Bearer <admin token>.")

    return guard
