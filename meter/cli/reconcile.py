"""`meter reconcile`: the ledger against the upstream's own usage and cost reports, for a range of UTC
days, one bucket per day and model (meter/reconcile, docs/reconciliation.md).

Exit status: 0 when every bucket's USD drift is within METER_RECONCILE_DRIFT_USD, 1 when one is
not (the output names each), 2 when the reports or the ledger could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.cli import common
from meter.cli.output import FORMATS, emit
from meter.reconcile.ledger import read_ledger
from meter.reconcile.report import BucketKey, LedgerSide, compare
from meter.reconcile.upstream import ReconcileError, fetch_upstream
from meter.settings import ConfigError

# A longer range is many pages of both reports and a long ledger scan: run it in parts.
MAX_DAYS = 366


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "reconcile",
        help="compare the ledger with the upstream's usage and cost reports, by UTC day and model",
    )
    parser.add_argument("--from", dest="start", type=date.fromisoformat, required=True, help="YYYY-MM-DD (UTC)")
    parser.add_argument("--to", dest="end", type=date.fromisoformat, required=True, help="YYYY-MM-DD, exclusive")
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.set_defaults(run=_reconcile)


def _reconcile(args: argparse.Namespace) -> None:
    config = common.settings(args)
    if not config.upstream_admin_key:
        raise ConfigError("METER_UPSTREAM_ADMIN_KEY is required: the upstream's Admin API key (sk-ant-admin...)")
    if not args.start < args.end <= args.start + timedelta(days=MAX_DAYS):
        raise ConfigError(f"--to must be after --from, and at most {MAX_DAYS} days after it")

    async def ledger(conn: AsyncConnection) -> dict[BucketKey, LedgerSide]:
        return await read_ledger(conn, args.start, args.end)

    try:
        upstream = asyncio.run(fetch_upstream(config.upstream_url, config.upstream_admin_key, args.start, args.end))
        recorded = common.in_transaction(config, ledger)
    except (ReconcileError, DBAPIError, OSError) as exc:
        print(f"meter: reconcile: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    report = compare(args.start, args.end, config.reconcile_drift_usd, upstream, recorded)
    rows = [bucket.row(report.threshold) for bucket in report.buckets]
    if args.format == "json":
        emit(report.as_json(), "json")
    elif args.format == "csv":
        emit(rows, "csv")
        print(report.summary(), file=sys.stderr)  # the CSV stays one table for programs
    else:
        emit(rows, "table")
        print(f"\n{report.summary()}")
    if report.over_threshold:
        raise SystemExit(1)
