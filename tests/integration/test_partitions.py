"""The ledger partitioned by month (migration 0010, meter/db/partitions.py) on a real Postgres: rows
already there survive the migration (cursor included), a retried row is still written once, a row
whose month has no partition waits in the default partition and moves into the partition made
later, retention drops whole old months only, and two processes maintaining at once agree."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, date, datetime

from prometheus_client import CollectorRegistry

from meter.db import migrate
from meter.db.engine import create_engine
from meter.db.partitions import maintain, months_before
from meter.db.queries import write_ledger_batch
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from tests.integration.test_ledger import synthetic_row
from tests.support import create_database, sql

OLD_MONTHS = (datetime(2026, 10, 5, tzinfo=UTC), datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC))


def partitions(url: str) -> dict[str, int]:
    """Each partition of the ledger, with its row count."""
    tables = sql(
        url,
        "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'usage_events'::regclass",
    )
    return {t["name"]: sql(url, f'SELECT count(*) AS n FROM "{t["name"]}"')[0]["n"] for t in tables}


def fresh_database(server: str) -> str:
    url = create_database(server, f"meter_part_{secrets.token_hex(3)}")
    migrate.upgrade(url)
    return url


def insert_at_0009(url: str, request_id: str, started_at: datetime) -> None:
    sql(
        url,
        "INSERT INTO usage_events (request_id, tenant_id, key_id, endpoint, stream, status, started_at, "
        "finished_at, duration_ms) VALUES ($1, 'ten_old', 'key_old', 'messages', false, 200, $2, $2, 1)",
        request_id,
        started_at,
    )


def test_the_migration_keeps_every_row_and_the_feed_cursor(postgres_server: str) -> None:
    url = create_database(postgres_server, f"meter_part_{secrets.token_hex(3)}")
    migrate.upgrade(url, "0009")
    now = datetime.now(UTC)
    for index, started in enumerate((*OLD_MONTHS, now)):
        insert_at_0009(url, f"req_old{index}", started)
    before = sql(url, "SELECT request_id, started_at, txid, seq FROM usage_events ORDER BY seq")

    migrate.upgrade(url)
    migrate.check(url)
    after = sql(url, "SELECT request_id, started_at, txid, seq FROM usage_events ORDER BY seq")
    assert after == before
    this_month = date(now.year, now.month, 1)
    expected = {"usage_events_default", "usage_events_2026_10", "usage_events_2026_11"}
    expected |= {f"usage_events_{months_before(this_month, -ahead):%Y_%m}" for ahead in range(3)}
    counts = partitions(url)
    assert set(counts) == expected
    assert counts["usage_events_2026_10"] == counts["usage_events_2026_11"] == 1
    assert counts["usage_events_default"] == 0
    # New rows continue the sequence, after every old one.
    insert_at_0009(url, "req_new", now)
    (new,) = sql(url, "SELECT seq FROM usage_events WHERE request_id = 'req_new'")
    assert new["seq"] > max(row["seq"] for row in before)

    migrate.downgrade(url, "0009")
    assert sql(url, "SELECT request_id, started_at, txid, seq FROM usage_events ORDER BY seq")[:3] == before
    assert sql(url, "SELECT relkind::text FROM pg_class WHERE relname = 'usage_events'") == [{"relkind": "r"}]


async def test_a_retried_row_is_written_once_whatever_its_month(database_url: str) -> None:
    engine = create_engine(database_url)
    tenant = f"ten_{secrets.token_hex(4)}"
    rows = [synthetic_row(tenant_id=tenant, started_at=at, finished_at=at) for at in (*OLD_MONTHS, datetime.now(UTC))]
    try:
        for _ in range(2):  # the spool's replay, a retried batch: the same rows again
            async with engine.begin() as conn:
                await write_ledger_batch(conn, rows, [])
    finally:
        await engine.dispose()
    stored = await asyncio.to_thread(
        sql, database_url, "SELECT request_id FROM usage_events WHERE tenant_id = $1", tenant
    )
    assert sorted(r["request_id"] for r in stored) == sorted(r.request_id for r in rows)
    daily = await asyncio.to_thread(
        sql, database_url, "SELECT sum(requests) AS n FROM usage_daily WHERE tenant_id = $1", tenant
    )
    assert daily == [{"n": 3}]


async def test_a_row_without_its_partition_waits_in_the_default_one_then_moves(database_url: str) -> None:
    far = datetime(2031, 5, 17, 12, tzinfo=UTC)
    row = synthetic_row(tenant_id=f"ten_{secrets.token_hex(4)}", started_at=far, finished_at=far)
    engine = create_engine(database_url)
    writer = LedgerWriter(engine, Metrics(CollectorRegistry()), batch_rows=10, flush_interval_s=0.01)
    writer.start()
    try:
        writer.record(row)
        await writer.flush()
        in_default = "SELECT seq FROM usage_events_default WHERE request_id = $1"
        (waiting,) = await asyncio.to_thread(sql, database_url, in_default, row.request_id)
        await maintain(engine, date(2031, 4, 2), None)
    finally:
        await writer.close()
        await engine.dispose()
    moved = "SELECT seq FROM usage_events_2031_05 WHERE request_id = $1"
    assert await asyncio.to_thread(sql, database_url, moved, row.request_id) == [waiting]
    assert await asyncio.to_thread(sql, database_url, in_default, row.request_id) == []


async def test_retention_drops_whole_old_months_only(postgres_server: str) -> None:
    url = await asyncio.to_thread(fresh_database, postgres_server)
    engine = create_engine(url)
    december = datetime(2026, 12, 1, tzinfo=UTC)
    rows = [synthetic_row(started_at=at, finished_at=at) for at in (*OLD_MONTHS, december)]
    try:
        async with engine.begin() as conn:
            await write_ledger_batch(conn, rows, [])
        # October and November had no partitions: their rows wait in the default one until they do.
        assert (await maintain(engine, date(2027, 1, 20), None)).default_rows == 2
        for month in ("2026-10-01", "2026-11-01"):
            await asyncio.to_thread(sql, url, "SELECT meter_ledger_partition($1::date)", date.fromisoformat(month))
        kept_all = await maintain(engine, date(2027, 1, 20), None)
        assert kept_all.dropped == [] and kept_all.default_rows == 0
        # Keep one month before the current one (January 2027): December stays, October and November go.
        done = await maintain(engine, date(2027, 1, 20), 1)
    finally:
        await engine.dispose()
    assert done.dropped == ["usage_events_2026_10", "usage_events_2026_11"]
    left = await asyncio.to_thread(sql, url, "SELECT request_id FROM usage_events")
    assert [r["request_id"] for r in left] == [rows[2].request_id]
    # The daily rollups of the dropped months stay.
    days = await asyncio.to_thread(sql, url, "SELECT day FROM usage_daily ORDER BY day")
    assert [d["day"] for d in days] == [date(2026, 10, 5), date(2026, 11, 30), date(2026, 12, 1)]
    assert "usage_events_2026_12" in await asyncio.to_thread(partitions, url)


async def test_two_processes_maintaining_at_once_make_each_partition_once(postgres_server: str) -> None:
    url = await asyncio.to_thread(fresh_database, postgres_server)
    engines = [create_engine(url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(maintain(engine, date(2028, 6, 1), None) for engine in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    made = sorted(name for result in results for name in result.created)
    assert made == ["usage_events_2028_06", "usage_events_2028_07", "usage_events_2028_08"]
