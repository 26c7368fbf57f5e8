"""What every command shares: settings from flags and environment, and the database."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from meter.credentials import KeyHasher
from meter.settings import ConfigError, Settings

T = TypeVar("T")


def settings(args: argparse.Namespace, **overrides: object) -> Settings:
    """Settings from the environment; the command's flags (and `overrides`) win."""
    names = ("host", "port", "upstream_url", "database_url", "data_dir", "workers")
    flags = {name: getattr(args, name, None) for name in names}
    return Settings.from_env(None, **{**flags, **overrides})


def database_url(config: Settings) -> str:
    """The configured server, else the embedded one (started on first use)."""
    if config.database_url:
        return config.database_url
    from meter import embedded_pg

    return embedded_pg.start(config.data_dir)


def key_hasher(config: Settings) -> KeyHasher:
    """The hasher of the configured pepper, once the database agrees it is the pepper its keys use."""
    hasher = KeyHasher(config.with_key_pepper().key_pepper or "")
    check_pepper(config, hasher)
    return hasher


def check_pepper(config: Settings, hasher: KeyHasher) -> None:
    from meter.db.queries import agreed_setting

    async def work(conn: AsyncConnection) -> str:
        return await agreed_setting(conn, "key_pepper", hasher.fingerprint())

    if in_transaction(config, work) != hasher.fingerprint():
        raise ConfigError(
            "METER_KEY_PEPPER is not the pepper this database's keys were hashed with: every meter "
            "process and CLI of one database needs the same one (see the README, Security)"
        )


def in_transaction(config: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the configured database."""
    from meter.db.engine import create_engine

    async def run() -> T:
        engine = create_engine(
            database_url(config), pool_size=1, transaction_pooling=config.database_transaction_pooling
        )
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())
