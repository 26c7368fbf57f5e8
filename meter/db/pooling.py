"""Checks at start that the database URLs carry what meter needs, so that a connection pooler in
the way fails meter's start with a line saying what to set, instead of quietly later.

Behind a transaction pooler (PgBouncer pool_mode=transaction) consecutive transactions of one client
may run on different server connections. What meter needs a session for is then broken without an
error: a LISTEN hears nothing (operator changes would not reach the process) and a session-level
advisory lock stays with whichever server connection took it. Prepared statements and session
settings fail loudly, but with messages that do not say which meter setting is missing.
"""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.engine import create_engine, create_hot_engine, libpq_url
from meter.settings import ConfigError, Settings

PROBE_CHANNEL = "meter_probe"
# A notification reaches a listener directly connected in milliseconds; this is a bound, not a wait.
PROBE_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
# SQLSTATEs of a prepared statement that another client left on the server connection, or that is
# missing from the one this statement landed on: a transaction pooler is in the way.
PREPARED_STATEMENT_STATES = {"42P05", "26000"}

POOLER_HINT = (
    "METER_DATABASE_URL seems to go through a transaction pooler such as PgBouncer in transaction mode: "
    "set METER_DATABASE_TRANSACTION_POOLING=true, and METER_LISTEN_DATABASE_URL to Postgres directly "
    "(or to a session-mode pool); see docs/scaling.md"
)


async def check_database(settings: Settings) -> None:
    """Raise ConfigError if the URLs cannot serve meter as configured; other errors pass through."""
    url = settings.database_url or ""
    pooled = settings.database_transaction_pooling
    engine = create_engine(url, pool_size=1, transaction_pooling=pooled)
    hot_engine = create_hot_engine(url, pool_size=1, transaction_pooling=pooled)
    try:
        try:
            async with hot_engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            arrived = await notifications_arrive(engine, settings.listen_url())
        except DBAPIError as exc:
            if _pooler_refusal(exc):
                raise ConfigError(f"{POOLER_HINT} ({exc.orig})") from exc
            raise
    finally:
        await engine.dispose()
        await hot_engine.dispose()
    if not arrived:
        which = "METER_LISTEN_DATABASE_URL" if settings.listen_database_url else "METER_DATABASE_URL"
        raise ConfigError(
            f"a notification sent on METER_DATABASE_URL did not arrive on {which} within {PROBE_WAIT_S:g} s: "
            "LISTEN needs a session of its own, which a transaction pooler does not keep (and both URLs must "
            "name the same database). Point METER_LISTEN_DATABASE_URL at Postgres directly, or at a "
            "session-mode pool; see docs/scaling.md"
        )


async def notifications_arrive(engine: AsyncEngine, listen_url: str) -> bool:
    """Whether a NOTIFY committed through `engine` reaches a LISTEN on `listen_url`."""
    token = secrets.token_hex(8)
    heard = asyncio.Event()
    connection = await asyncpg.connect(libpq_url(listen_url), timeout=CONNECT_TIMEOUT_S)
    try:

        def hear(_connection: object, _pid: int, _channel: str, payload: str) -> None:
            if payload == token:
                heard.set()

        await connection.add_listener(PROBE_CHANNEL, hear)
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_notify(:channel, :token)"), {"channel": PROBE_CHANNEL, "token": token})
        try:
            await asyncio.wait_for(heard.wait(), PROBE_WAIT_S)
        except TimeoutError:
            return False
        return True
    finally:
        connection.terminate()


def _pooler_refusal(exc: DBAPIError) -> bool:
    """PgBouncer refusing a startup parameter it does not track, or a prepared-statement clash."""
    return "unsupported startup parameter" in str(exc) or getattr(exc.orig, "sqlstate", None) in (
        PREPARED_STATEMENT_STATES
    )
