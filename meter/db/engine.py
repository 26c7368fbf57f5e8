"""Connecting to Postgres: URL normalisation, the shared engine, and the hot path's engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from meter.settings import POSTGRES_SCHEMES

T = TypeVar("T")


def async_url(url: str) -> str:
    """`postgresql://…` or `postgres://…` as SQLAlchemy's asyncpg URL."""
    return "postgresql+asyncpg://" + _without_scheme(url)


def libpq_url(url: str) -> str:
    """Any of the accepted forms as the plain `postgresql://…` that asyncpg and libpq read."""
    return "postgresql://" + _without_scheme(url)


def _without_scheme(url: str) -> str:
    for scheme in POSTGRES_SCHEMES:
        if url.startswith(scheme):
            return url[len(scheme) :]
    raise ValueError(f"not a postgresql:// URL: {url!r}")


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    """The engine for admin work, the ledger and background tasks."""
    # pool_pre_ping: after a Postgres restart the pool would otherwise hand out dead connections.
    return create_async_engine(async_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def create_hot_engine(url: str, pool_size: int = 20) -> AsyncEngine:
    """The request path's engine: each statement is its own transaction (AUTOCOMMIT: no BEGIN or
    COMMIT round trips) and there is no pre-ping, so a statement costs one round trip. A dead
    connection is retried once instead (`once_more_if_disconnected`)."""
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        isolation_level="AUTOCOMMIT",
        # A reservation need not wait for its WAL flush: if Postgres itself crashes, what is lost is
        # holds of requests in flight, which expire anyway; settled usage arrives with the ledger
        # rows, whose commits do wait. This takes a disk flush off every limited request.
        connect_args={"server_settings": {"synchronous_commit": "off"}},
    )


async def once_more_if_disconnected(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` on a connection; if the connection turns out dead (Postgres restarted), the pool
    discards it and `work` runs once more on a fresh one."""
    for attempt in (1, 2):
        try:
            async with engine.connect() as conn:
                return await work(conn)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")
