"""Connecting to Postgres: URL normalisation and the shared async engine."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def async_url(url: str) -> str:
    """`postgresql://…` or `postgres://…` as SQLAlchemy's asyncpg URL."""
    for scheme in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme) :]
    raise ValueError(f"not a postgresql:// URL: {url!r}")


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    # pool_pre_ping: after a Postgres restart the pool would otherwise hand out dead connections.
    return create_async_engine(async_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
