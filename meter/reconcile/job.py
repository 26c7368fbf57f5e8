"""The background reconciliation: with METER_UPSTREAM_ADMIN_KEY set, every
METER_RECONCILE_INTERVAL_S one meter process of the database reconciles yesterday and today (UTC)
and exports the result as metrics, for the MeterBillingDrift alert.

One process at a time: the first to take a Postgres advisory lock on a connection of its own keeps
it (and the connection) while it lives; the others try again each interval, so another takes over
within an interval of the holder stopping. The lock needs a session, so it is taken where LISTEN
is (METER_LISTEN_DATABASE_URL when set): behind a transaction pooler it would stay with whichever
server connection took it.

While some bucket's drift is over the threshold the job looks again every RECHECK_S rather than
every interval, so a drift that was only the upstream's reports lagging behind (Anthropic's appear
within minutes) clears before the alert's `for` ends. A failure is logged, counted in
meter_reconcile_errors_total and retried at the next run; it never stops the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from decimal import Decimal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.engine import libpq_url
from meter.metrics import Metrics
from meter.periods import today
from meter.pricing import PriceTable
from meter.reconcile.ledger import read_ledger
from meter.reconcile.report import Report, compare
from meter.reconcile.upstream import fetch_upstream
from meter.settings import Settings

log = logging.getLogger("meter.reconcile")
# pg_try_advisory_lock's key for "this process reconciles": the bytes of "meterrec".
LOCK_KEY = int.from_bytes(b"meterrec", "big")
RECHECK_S = 300.0
CONNECT_TIMEOUT_S = 10.0


class AdvisoryLock:
    """A session-level advisory lock, held on its own connection until `release`."""

    def __init__(self, database_url: str, key: int = LOCK_KEY) -> None:
        self._url = libpq_url(database_url)
        self._key = key
        self._connection: asyncpg.Connection | None = None

    async def hold(self) -> bool:
        """Whether this process holds the lock: kept if it still does, else taken if free."""
        if self._connection is not None:
            try:
                await self._connection.fetchval("SELECT 1")
                return True
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self.release()  # the session (and the lock with it) is gone: try afresh
        connection = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_S)
        try:
            taken = bool(await connection.fetchval("SELECT pg_try_advisory_lock($1)", self._key))
        except BaseException:
            connection.terminate()
            raise
        if not taken:
            await connection.close()
            return False
        self._connection = connection
        return True

    def release(self) -> None:
        if self._connection is not None:
            self._connection.terminate()  # ending the session releases the lock
            self._connection = None


async def reconcile_recent(settings: Settings, engine: AsyncEngine) -> Report:
    """Yesterday and today, UTC."""
    end = today() + timedelta(days=1)
    start = end - timedelta(days=2)
    upstream = await fetch_upstream(settings.upstream_url, settings.upstream_admin_key or "", start, end)
    async with engine.connect() as conn:
        ledger = await read_ledger(conn, start, end)
    return compare(start, end, settings.reconcile_drift_usd, upstream, ledger)


def publish(report: Report, metrics: Metrics, prices: PriceTable, seen: set[str]) -> None:
    """Set the drift gauge of every model label; a label set before and absent now goes to 0."""
    drift: dict[str, Decimal] = dict.fromkeys(seen, Decimal(0))
    for bucket in report.buckets:
        usd = bucket.usd_drift
        if usd is not None:
            label = bucket.model if bucket.model.startswith("(") or prices.knows(bucket.model) else "other"
            drift[label] = drift.get(label, Decimal(0)) + usd
    for label, usd in drift.items():
        metrics.reconcile_drift.labels(label).set(float(usd))
    seen.update(drift)
    metrics.reconcile_last_success.set(time.time())


async def keep_reconciled(settings: Settings, engine: AsyncEngine, metrics: Metrics, prices: PriceTable) -> None:
    """Reconcile every interval while this process holds the lock; runs until cancelled. Returns at
    once when no admin key is configured."""
    if not settings.upstream_admin_key or not settings.database_url:
        return
    lock = AdvisoryLock(settings.listen_url())
    seen: set[str] = set()
    try:
        while True:
            delay = settings.reconcile_interval_s
            try:
                if await lock.hold():
                    report = await reconcile_recent(settings, engine)
                    publish(report, metrics, prices, seen)
                    if report.over_threshold:
                        log.warning("billing drift: %s", report.summary())
                        delay = min(delay, RECHECK_S)
            except Exception:  # the next run retries; the gauges keep their last values meanwhile
                metrics.reconcile_errors.inc()
                log.warning("reconciliation with the upstream's reports failed", exc_info=True)
            await asyncio.sleep(delay)
    finally:
        lock.release()
