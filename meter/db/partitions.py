"""The ledger's monthly partitions (migration 0010): `usage_events_YYYY_MM` per UTC month, and
`usage_events_default` for a row whose month has none.

Every process keeps them, every CHECK_S (meter_ledger_partition serialises them with an advisory
lock): this month's partition and the next AHEAD_MONTHS' exist, so rows land in the default
partition only if every process was down for months (the gauge meter_ledger_default_partition_rows
shows it, and the next partition made for their month moves them in). With
METER_LEDGER_RETENTION_MONTHS = N, the partitions of months before the N months preceding the
current one are dropped whole: their rows leave the ledger, the usage feed and the statements,
while the daily rollups (usage_daily) and limits stay. Unset, nothing is ever dropped.

DDL waits at most LOCK_TIMEOUT for its lock and is tried again later, so that it never queues the
ledger's inserts behind a long reader of the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import date

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from meter import periods
from meter.metrics import Metrics

log = logging.getLogger("meter.partitions")

AHEAD_MONTHS = 2
CHECK_S = 3600.0
LOCK_TIMEOUT = "2s"
DEFAULT = "usage_events_default"
_MONTHLY = re.compile(r"usage_events_(\d{4})_(\d{2})")

_PARTITIONS = text(
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'usage_events'::regclass"
)


def is_partition(table: str) -> bool:
    return table == DEFAULT or _MONTHLY.fullmatch(table) is not None


def month_of(table: str) -> date | None:
    """The first day of the month a monthly partition holds; None for any other table."""
    match = _MONTHLY.fullmatch(table)
    return date(int(match[1]), int(match[2]), 1) if match else None


def months_before(month: date, count: int) -> date:
    year, index = divmod(month.year * 12 + month.month - 1 - count, 12)
    return date(year, index + 1, 1)


@dataclass(frozen=True)
class Maintenance:
    created: list[str]
    dropped: list[str]
    default_rows: int


async def maintain(engine: AsyncEngine, today: date, retention_months: int | None) -> Maintenance:
    """Make the partitions of this month and the next AHEAD_MONTHS, drop those past retention."""
    created = []
    month = periods.month_start(today)
    for _ in range(AHEAD_MONTHS + 1):
        if await _ddl(engine, "SELECT meter_ledger_partition(:month)", month=month):
            created.append(f"usage_events_{month:%Y_%m}")
        month = periods.next_month(month)
    dropped = []
    async with engine.connect() as conn:
        tables = list((await conn.execute(_PARTITIONS)).scalars())
    if retention_months:
        keep_from = months_before(periods.month_start(today), retention_months)
        for table in sorted(tables):
            held = month_of(table)
            if held is not None and held < keep_from:
                await _ddl(engine, f'DROP TABLE IF EXISTS "{table}"')
                dropped.append(table)
    async with engine.connect() as conn:
        default_rows = (await conn.execute(text(f"SELECT count(*) FROM {DEFAULT}"))).scalar_one()
    return Maintenance(created, dropped, default_rows)


async def _ddl(engine: AsyncEngine, statement: str, **parameters: object) -> object:
    """One statement in a transaction of its own, waiting at most LOCK_TIMEOUT for its locks."""
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        result = await conn.execute(text(statement), parameters)
        return result.scalar() if result.returns_rows else None


async def keep_partitioned(engine: AsyncEngine, metrics: Metrics, retention_months: int | None) -> None:
    """maintain() now and every CHECK_S; runs until cancelled."""
    while True:
        try:
            done = await maintain(engine, periods.today(), retention_months)
            metrics.ledger_default_partition_rows.set(done.default_rows)
            for table in done.created:
                log.info("ledger partition %s made", table)
            for table in done.dropped:
                log.warning("ledger partition %s dropped: older than METER_LEDGER_RETENTION_MONTHS", table)
        except Exception:  # a lock not granted in time, the database away: the next round tries again
            log.warning("ledger partition maintenance failed; trying again in %s s", CHECK_S, exc_info=True)
        await asyncio.sleep(CHECK_S)
