"""Ledger write throughput and lag, in-process: meter's own LedgerWriter, with meter's default batch
settings, on a real engine and a migrated database, fed synthetic rows of the shape the request path
records (meter/proxy/recorder.py::_row).

Lag is the time from `record()` to the commit that wrote the row. The writer writes rows in queue
order and counts them in `meter_ledger_rows_written_total` after each commit, so a sampler that
polls that counter every millisecond knows which rows are committed, through public interfaces only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from bench.stats import percentile, run_async
from meter.db import migrate
from meter.db.engine import create_engine
from meter.db.models import usage_events
from meter.db.rows import LedgerRow, Settlement
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.settings import Settings
from tests.support import create_database

SAMPLE_INTERVAL_S = 0.001
# Unthrottled rows are queued this many at a time, yielding between chunks so the writer runs too.
CHUNK = 1_000


@dataclass
class LedgerRun:
    label: str
    rows: int
    offered_rate: float | None  # rows/s; None when unthrottled
    elapsed_s: float = 0.0  # first record() to the last commit
    max_pending: int = 0
    lags_s: list[float] = field(default_factory=list)
    write_errors: float = 0.0
    dropped: float = 0.0

    @property
    def written_rate(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def max_lag_s(self) -> float:
        return max(self.lags_s, default=0.0)

    def lag_p(self, q: float) -> float:
        return percentile(self.lags_s, q)


def synthetic_rows(prefix: str, count: int) -> list[LedgerRow]:
    """Rows shaped like the recorder's: a priced, non-streamed 200 of a few hundred tokens."""
    started = datetime.now(UTC)
    return [
        LedgerRow(
            request_id=f"{prefix}_{i:09d}",
            tenant_id="ten_bench",
            key_id="key_bench",
            model="claude-sonnet-4-6",
            endpoint="messages",
            stream=False,
            status=200,
            error_type=None,
            input_tokens=250,
            output_tokens=120,
            cache_creation_input_tokens=0,
            cache_creation_5m_input_tokens=0,
            cache_creation_1h_input_tokens=0,
            cache_read_input_tokens=0,
            cost_usd=Decimal("0.002550000000"),
            partial=False,
            stop_reason="end_turn",
            upstream_request_id=f"req_up_{i:09d}",
            started_at=started,
            finished_at=started + timedelta(milliseconds=350),
            duration_ms=350,
            ttfb_ms=None,
        )
        for i in range(count)
    ]


async def _run(
    writer: LedgerWriter,
    registry: CollectorRegistry,
    run: LedgerRun,
    rows: list[LedgerRow],
    settlements: list[Settlement] | None = None,
) -> None:
    queued_at: list[float] = []
    base = registry.get_sample_value("meter_ledger_rows_written_total") or 0.0

    async def produce() -> None:
        start = time.perf_counter()
        i = 0
        while i < len(rows):
            if run.offered_rate is None:
                due = min(len(rows), i + CHUNK)
            else:
                due = min(len(rows), int((time.perf_counter() - start) * run.offered_rate) + 1)
            while i < due:
                queued_at.append(time.perf_counter())
                writer.record(rows[i], settlements[i] if settlements else None)
                i += 1
            await asyncio.sleep(0 if run.offered_rate is None else SAMPLE_INTERVAL_S)

    async def sample() -> None:
        committed = 0
        while committed < len(rows):
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            now = time.perf_counter()
            run.max_pending = max(run.max_pending, writer.pending)
            written = int((registry.get_sample_value("meter_ledger_rows_written_total") or 0.0) - base)
            for index in range(committed, min(written, len(queued_at))):
                run.lags_s.append(now - queued_at[index])
            committed = max(committed, min(written, len(queued_at)))

    producer = asyncio.create_task(produce())
    # Bounded: a writer that cannot keep up at all fails the run instead of hanging it.
    limit_s = 60 + (len(rows) / run.offered_rate if run.offered_rate else 0)
    await asyncio.wait_for(asyncio.gather(producer, sample()), limit_s)
    run.elapsed_s = time.perf_counter() - queued_at[0]
    run.write_errors = registry.get_sample_value("meter_ledger_write_errors_total") or 0.0
    run.dropped = registry.get_sample_value("meter_ledger_rows_dropped_total") or 0.0


async def _bench(database_url: str, rows: int, steady_rate: float) -> tuple[list[LedgerRun], int]:
    defaults = Settings()
    engine = create_engine(database_url)
    registry = CollectorRegistry()
    writer = LedgerWriter(
        engine,
        Metrics(registry),
        batch_rows=defaults.ledger_batch_rows,
        flush_interval_s=defaults.ledger_flush_interval_s,
        max_pending=defaults.ledger_max_pending,
    )
    writer.start()
    runs = [LedgerRun(f"steady {steady_rate:,.0f} rows/s", rows, steady_rate), LedgerRun("unthrottled", rows, None)]
    try:
        for number, run in enumerate(runs):
            await _run(writer, registry, run, synthetic_rows(f"bench{number}", rows))
        await writer.close()
        async with engine.connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(usage_events))).scalar_one()
    finally:
        await engine.dispose()
    return runs, stored


def ledger_benchmark(server_url: str, database: str, rows: int, steady_rate: float) -> tuple[list[LedgerRun], int]:
    """Write `rows` rows at `steady_rate` rows/s, then `rows` more unthrottled, into a fresh
    database on `server_url`. Returns both runs and the count of rows found in the table after."""
    database_url = create_database(server_url, database)
    migrate.upgrade(database_url)
    return run_async(_bench(database_url, rows, steady_rate))
