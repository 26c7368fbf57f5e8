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


# Connections each engine of a meter process may open: `pool_size` kept, as many again on bursts.
ENGINE_POOL_SIZE = 10
HOT_ENGINE_POOL_SIZE = 20

# Through a transaction pooler (PgBouncer pool_mode=transaction) consecutive transactions of one
# client connection may run on different server connections, so a named prepared statement may be
# missing there or clash with another client's of the same name. With both caches off, asyncpg
# prepares each statement unnamed and binds it before the Sync that ends the exchange: one server
# connection sees the whole of it, and nothing is left behind on the server.
UNNAMED_STATEMENTS = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}


def create_engine(url: str, pool_size: int = ENGINE_POOL_SIZE, transaction_pooling: bool = False) -> AsyncEngine:
    """The engine for admin work, the ledger and background tasks."""
    # pool_pre_ping: after a Postgres restart the pool would otherwise hand out dead connections.
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=dict(UNNAMED_STATEMENTS) if transaction_pooling else {},
    )


def create_hot_engine(
    url: str, pool_size: int = HOT_ENGINE_POOL_SIZE, transaction_pooling: bool = False
) -> AsyncEngine:
    """The request path's engine: each statement is its own transaction (AUTOCOMMIT: no BEGIN or
    COMMIT round trips) and there is no pre-ping, so a statement costs one round trip. A dead
    connection is retried once instead (`once_more_if_disconnected`)."""
    # A reservation need not wait for its WAL flush: if Postgres itself crashes, what is lost is
    # holds of requests in flight, which expire anyway; settled usage arrives with the ledger rows,
    # whose commits do wait. This takes a disk flush off every lease refill. A transaction pooler
    # would hand the session setting to other clients' transactions (the ledger's among them), and
    # PgBouncer refuses it at connect: there, these commits wait for their flush too.
    connect_args: dict[str, object] = (
        dict(UNNAMED_STATEMENTS) if transaction_pooling else {"server_settings": {"synchronous_commit": "off"}}
    )
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        isolation_level="AUTOCOMMIT",
        connect_args=connect_args,
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
