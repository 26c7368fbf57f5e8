"""Alembic environment: async engine, one advisory lock so that several meter processes starting
at once run the migrations exactly once."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from meter.db.engine import create_engine
from meter.db.models import metadata
from meter.db.partitions import is_partition

MIGRATION_LOCK = 7_464_001  # arbitrary, fixed advisory-lock key

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("METER_DATABASE_URL")
    if url:
        return str(url)
    from meter import embedded_pg

    return embedded_pg.start(Path(os.environ.get("METER_DATA_DIR", ".meter")))


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_server_default=True,
        # The ledger's partitions are made at run time (meter/db/partitions.py), not declared.
        include_name=lambda name, kind, _parents: not (kind == "table" and is_partition(name)),
    )
    with context.begin_transaction():
        # Held until the migration transaction ends, so a second process waits, then finds head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def run_async() -> None:
    engine = create_engine(
        database_url(), pool_size=1, transaction_pooling=bool(config.attributes.get("transaction_pooling"))
    )
    async with engine.connect() as connection:
        await connection.run_sync(run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("meter's migrations run online only")
asyncio.run(run_async())
