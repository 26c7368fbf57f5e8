"""The ledger writer on a real Postgres: idempotent, batched, and bounded by admission."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from meter.credentials import new_id
from meter.db.engine import create_engine
from meter.db.models import usage_quarantine
from meter.db.rows import LedgerRow, Settlement
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.spool import Record, Spool
from tests.support import Admin, Ledger, Process, start_meter


def synthetic_row(**overrides: Any) -> LedgerRow:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "request_id": new_id("req"),
        "tenant_id": "ten_synthetic",
        "key_id": "key_synthetic",
        "model": "claude-sonnet-4-6",
        "endpoint": "messages",
        "stream": False,
        "status": 200,
        "error_type": None,
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_creation_5m_input_tokens": 0,
        "cache_creation_1h_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cost_usd": Decimal("0.00033"),
        "partial": False,
        "stop_reason": "end_turn",
        "upstream_request_id": None,
        "started_at": now,
        "finished_at": now,
        "duration_ms": 1,
        "ttfb_ms": 1,
        **overrides,
    }
    return LedgerRow(**fields)


async def test_rows_are_idempotent_and_invalid_rows_are_isolated(database_url: str, ledger: Ledger) -> None:
    engine = create_engine(database_url)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    writer = LedgerWriter(engine, metrics, batch_rows=50, flush_interval_s=0.01)
    writer.start()
    try:
        rows = [synthetic_row() for _ in range(120)]
        for row in rows + rows[:30]:  # 30 repeated: a retried batch must not double-count
            writer.record(row)
        # One row Postgres rejects (out of range for its column) must not sink its batch.
        bad = synthetic_row(duration_ms=2**40)
        writer.record(bad)
        writer.record(last := synthetic_row())
        await writer.flush()
    finally:
        await writer.close()
        await engine.dispose()
    stored = {r["request_id"] for r in await asyncio.to_thread(ledger.rows, tenant_id="ten_synthetic")}
    assert {r.request_id for r in rows} | {last.request_id} <= stored
    assert bad.request_id not in stored
    # Rejected, so quarantined where the operator sees it, as the spool writes it; never dropped.
    (kept,) = await quarantined(engine_url=database_url, request_id=bad.request_id)
    assert msgspec.json.decode(kept["record"], type=Record).row == bad
    assert "int32" in kept["error"]
    assert registry.get_sample_value("meter_ledger_rows_quarantined_total") == 1
    assert registry.get_sample_value("meter_ledger_rows_dropped_total") == 0
    assert (registry.get_sample_value("meter_ledger_rows_written_total") or 0) >= 121


async def reserved_tenant(engine: Any, name: str) -> tuple[str, str]:
    """A tenant with a daily token limit and a monthly budget, and a hold of 1,000 tokens and $0.50."""
    tenant, hold = new_id("ten"), new_id("hold")
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO tenants (id, name) VALUES (:t, :n)"), {"t": tenant, "n": name})
        insert = "INSERT INTO limits (subject_id, tenant_id, tokens_per_day, budget_usd_per_month)"
        await conn.execute(text(insert + " VALUES (:t, :t, 10000, 5)"), {"t": tenant})
        reserved = await conn.execute(
            text("SELECT meter_reserve(:hold, 'proc_test', ARRAY[:t], 1000, 0.5, 60, true)"),
            {"hold": hold, "t": tenant},
        )
        assert "true" in str(reserved.scalar_one()).lower()
    return tenant, hold


def settling(row: LedgerRow, hold: str) -> Settlement:
    """The settlement the recorder gives a row of a request that held `hold`."""
    day = row.started_at.date()
    tokens = row.input_tokens + row.output_tokens + row.cache_creation_input_tokens + row.cache_read_input_tokens
    return Settlement(hold=hold, request_id=row.request_id, subjects=[row.tenant_id], day=day.isoformat(),
                      month=day.replace(day=1).isoformat(), tokens=tokens, usd=row.cost_usd or Decimal(0))  # fmt: skip


async def write_and_read_limits(engine: Any, entries: list[tuple[LedgerRow, Settlement]]) -> dict[str, Any]:
    """Queue the entries at once (one batch), write them, and read back each tenant's limits and holds."""
    writer = LedgerWriter(engine, Metrics(CollectorRegistry()), batch_rows=100, flush_interval_s=0.01)
    writer.start()
    try:
        for row, settlement in entries:
            writer.record(row, settlement)
        await writer.flush()
    finally:
        await writer.close()
    found: dict[str, Any] = {}
    async with engine.connect() as conn:
        for row, settlement in entries:
            read = text("SELECT * FROM limits WHERE subject_id = :t")
            limits = dict((await conn.execute(read, {"t": row.tenant_id})).mappings().one())
            held = text("SELECT count(*) FROM holds WHERE id = :h")
            found[row.tenant_id] = (limits, (await conn.execute(held, {"h": settlement.hold})).scalar_one())
    return found


async def test_a_refused_row_still_settles_its_hold(database_url: str) -> None:
    """Postgres rejects the row (quarantined), yet what it used counts against its tenant's limits and
    its hold is released, as if the row had gone in."""
    engine = create_engine(database_url)
    tenant, hold = await reserved_tenant(engine, "refused row")
    bad = synthetic_row(tenant_id=tenant, duration_ms=2**40, input_tokens=7, cache_read_input_tokens=5,
                        output_tokens=9, cost_usd=Decimal("0.000123"))  # fmt: skip
    ((limits, holds),) = (await write_and_read_limits(engine, [(bad, settling(bad, hold))])).values()
    await engine.dispose()
    assert await quarantined(engine_url=database_url, request_id=bad.request_id)
    assert (limits["day_tokens"], limits["month_usd"]) == (7 + 5 + 9, Decimal("0.000123"))
    assert (limits["day_tokens_held"], limits["month_usd_held"], limits["in_flight"], holds) == (0, 0, 0, 0)


async def test_a_batch_settles_each_hold_with_its_rows_usage_once(database_url: str) -> None:
    """Two tenants' holds in one batch, each settled with the tokens and cost of its own rows (cache
    tokens count, a row without a price costs nothing); a row queued twice is inserted and settled once."""
    engine = create_engine(database_url)
    (a, hold_a), (b, hold_b) = [await reserved_tenant(engine, name) for name in ("batch a", "batch b")]
    cached = {"cache_creation_input_tokens": 5, "cache_creation_5m_input_tokens": 5, "cache_read_input_tokens": 6}
    first = synthetic_row(tenant_id=a, input_tokens=3, output_tokens=4, cost_usd=Decimal("0.001"), **cached)
    second = synthetic_row(tenant_id=a, input_tokens=10, output_tokens=20, cost_usd=None)
    other = synthetic_row(tenant_id=b, input_tokens=1, output_tokens=2, cost_usd=Decimal("0.000007"))
    entries = [(row, settling(row, hold)) for row, hold in ((first, hold_a), (second, hold_a), (other, hold_b))]
    found = await write_and_read_limits(engine, [entries[0], *entries])
    await engine.dispose()
    (limits_a, held_a), (limits_b, held_b) = found[a], found[b]
    assert (limits_a["day_tokens"], limits_a["month_usd"]) == (3 + 4 + 5 + 6 + 10 + 20, Decimal("0.001"))
    assert (limits_b["day_tokens"], limits_b["month_usd"]) == (1 + 2, Decimal("0.000007"))
    assert (limits_a["in_flight"], limits_b["in_flight"], held_a, held_b) == (0, 0, 0, 0)


async def quarantined(engine_url: str, request_id: str) -> list[dict[str, Any]]:
    engine = create_engine(engine_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            query = select(usage_quarantine).where(usage_quarantine.c.request_id == request_id)
            return [dict(row) for row in (await conn.execute(query)).mappings()]
    finally:
        await engine.dispose()


def test_full_backlog_refuses_new_requests_with_529(
    database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path
) -> None:
    meter = start_meter(database_url, upstream.base_url, tmp_path, METER_LEDGER_MAX_PENDING="0")
    try:
        admin = Admin(meter.base_url)
        key = admin.issue_key(admin.create_tenant("backlog")["id"])
        with (
            anthropic.Anthropic(base_url=meter.base_url, api_key=key["key"], max_retries=0) as client,
            pytest.raises(anthropic.OverloadedError) as caught,
        ):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        row = ledger.row(caught.value.response.headers["x-meter-request-id"])
        assert (row["status"], row["error_type"]) == (529, "overloaded_error")
    finally:
        meter.stop()


async def test_the_writer_outlives_an_error_that_is_not_the_database(
    database_url: str, ledger: Ledger, tmp_path: Path
) -> None:
    """A row that cannot even be encoded (not a database or socket error): logged, counted, retried,
    then quarantined, and the writer goes on writing."""
    engine = create_engine(database_url)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    writer = LedgerWriter(engine, metrics, batch_rows=50, flush_interval_s=0.01, spool=Spool(tmp_path, metrics))
    writer.start()
    try:
        good = [synthetic_row(tenant_id="ten_unencodable") for _ in range(5)]
        odd = synthetic_row(tenant_id="ten_unencodable", usage_extra={"field": object()})
        for row in (*good[:3], odd, *good[3:]):
            writer.record(row)
        await writer.flush()
        writer.record(after := synthetic_row(tenant_id="ten_unencodable"))
        await writer.flush()
    finally:
        await writer.close()
        await engine.dispose()
    stored = {r["request_id"] for r in await asyncio.to_thread(ledger.rows, tenant_id="ten_unencodable")}
    assert stored == {row.request_id for row in (*good, after)}
    (kept,) = await quarantined(engine_url=database_url, request_id=odd.request_id)
    assert kept["record"].startswith("(LedgerRow(") and "TypeError" in kept["error"]
    assert (registry.get_sample_value("meter_ledger_write_errors_total") or 0) >= 3
    assert registry.get_sample_value("meter_ledger_rows_dropped_total") == 0
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("*.log")))  # all written: the spool is gone
