"""What every command shares: settings from flags and environment, and the database."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from meter.settings import Settings

T = TypeVar("T")


def settings(args: argparse.Namespace, **overrides: object) -> Settings:
    """Settings from the environment; the command's flags (and `overrides`) win."""
    flags = {name: getattr(args, name, None) for name in ("host", "port", "upstream_url", "database_url", "data_dir")}
    return Settings.from_env(None, **{**flags, **overrides})


def database_url(config: Settings) -> str:
    """The configured server, else the embedded one (started on first use)."""
    if config.database_url:
        return config.database_url
    from meter import embedded_pg

    return embedded_pg.start(config.data_dir)


def in_transaction(config: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the configured database."""
    from meter.db.engine import create_engine

    async def run() -> T:
        engine = create_engine(database_url(config), pool_size=1)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())
