"""Ledger rows per second per Postgres core, for sizing (docs/scaling.md).

meter's own LedgerWriter (default batching) writes synthetic rows as fast as they can be queued into
a Postgres of the benchmark's own (embedded, so that its CPU time is its alone on a shared machine),
once directly and once through a real PgBouncer in transaction mode, then directly again with every
row a limited tenant's (settling its share of a lease, as the recorder's rows do). Postgres's CPU
time (the postmaster and every backend and helper under it) is read from /proc before and after each
run: rows / Postgres CPU-seconds is what one fully busy Postgres core writes. The CPU this process
spent meanwhile (queueing the rows, building and encoding each batch) is meter's side of it.

    .venv/bin/python -m bench.ledger_per_core [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import text

from bench import ledger_bench
from bench.cpu import CpuAccount
from meter.db import migrate
from meter.db.engine import create_engine
from meter.db.rows import LedgerRow, Settlement
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.periods import month_start
from meter.settings import Settings
from tests.pgbouncer import PgBouncer, Pool
from tests.support import EmbeddedPostgres, create_database

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# The limited run's tenant: limits far from reached, and a lease holding more than the run uses.
_LIMITED = [
    "INSERT INTO tenants (id, name) VALUES ('ten_bench', 'bench')",
    "INSERT INTO limits (subject_id, tenant_id, tokens_per_day, budget_usd_per_month)"
    " VALUES ('ten_bench', 'ten_bench', 1000000000000, 1000000000)",
    "INSERT INTO holds (id, owner, subjects, tokens, usd, expires_at, lease)"
    " VALUES ('lease_bench', 'proc_bench', ARRAY['ten_bench'], 100000000000, 100000000,"
    " now() + interval '1 day', true)",
    "UPDATE limits SET day_tokens_held = 100000000000, month_tokens_held = 100000000000,"
    " day_usd_held = 100000000, month_usd_held = 100000000",
]


def lease_settlements(rows: list[LedgerRow]) -> list[Settlement]:
    """What each row of a limited tenant carries: its usage, taken from the process's lease."""
    return [
        Settlement(hold="lease_bench", request_id=row.request_id, subjects=["ten_bench"],
                   day=row.started_at.date().isoformat(), month=month_start(row.started_at.date()).isoformat(),
                   tokens=row.input_tokens + row.output_tokens, usd=row.cost_usd or Decimal(0), lease=True)
        for row in rows
    ]  # fmt: skip


async def write(
    url: str, pooled: bool, rows: int, postgres: CpuAccount, bouncer: CpuAccount, label: str, limited: bool = False
) -> dict[str, float]:
    defaults = Settings()
    engine = create_engine(url, transaction_pooling=pooled)
    registry = CollectorRegistry()
    writer = LedgerWriter(
        engine,
        Metrics(registry),
        defaults.ledger_batch_rows,
        defaults.ledger_flush_interval_s,
        defaults.ledger_max_pending,
    )
    batch = ledger_bench.synthetic_rows(label, rows)
    settlements = None
    if limited:
        async with engine.begin() as conn:
            for statement in _LIMITED:
                await conn.execute(text(statement))
        settlements = lease_settlements(batch)
    writer.start()
    run = ledger_bench.LedgerRun(label, rows, None)
    try:
        before, bouncer_before, own_before = postgres.ticks(), bouncer.ticks(), time.process_time()
        await ledger_bench._run(writer, registry, run, batch, settlements)
        own_s = time.process_time() - own_before
        cpu_s = (postgres.ticks() - before) / TICKS_PER_S
        bouncer_s = (bouncer.ticks() - bouncer_before) / TICKS_PER_S
        await writer.close()
    finally:
        await engine.dispose()
    return {
        "rows/s": run.written_rate,
        "postgres cpu s": cpu_s,
        "rows per postgres cpu-second": rows / cpu_s,
        "pgbouncer cpu s": bouncer_s,
        "writer cpu us per row": own_s / rows * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meter-ledger-core-") as directory:
        embedded = EmbeddedPostgres(Path(directory) / "postgres")
        try:
            postmaster = embedded.server.get_pid()
            postgres = CpuAccount(postmaster)
            url = create_database(embedded.url(), "ledger_core")
            migrate.upgrade(url)
            bouncer = PgBouncer(embedded.url(), {"ledger": Pool("ledger_core", "transaction", 4)})
            pooler = CpuAccount(bouncer.process.pid)
            try:
                results = {
                    "direct": asyncio.run(write(url, False, args.rows, postgres, pooler, "direct")),
                    "pgbouncer (transaction)": asyncio.run(
                        write(bouncer.url("ledger"), True, args.rows, postgres, pooler, "bounced")
                    ),
                    "direct, limited tenant (lease settlements)": asyncio.run(
                        write(url, False, args.rows, postgres, pooler, "limited", limited=True)
                    ),
                }
            finally:
                bouncer.stop()
        finally:
            embedded.cleanup()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    print(f"commit {commit}, {os.cpu_count()} cores ({cpu}), {platform.platform()}, {time.strftime('%Y-%m-%d')}")
    print(f"{args.rows:,} rows per run, unthrottled, meter's default batching")
    print("| path | written rows/s | Postgres CPU s | rows per Postgres CPU-second | PgBouncer CPU s "
          "| writer CPU per row |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for label, result in results.items():
        print(
            f"| {label} | {result['rows/s']:,.0f} | {result['postgres cpu s']:.2f} | "
            f"{result['rows per postgres cpu-second']:,.0f} | {result['pgbouncer cpu s']:.2f} | "
            f"{result['writer cpu us per row']:.1f} µs |"
        )


if __name__ == "__main__":
    main()
