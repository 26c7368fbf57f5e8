"""The ledger writer: usage rows are queued in memory and written to Postgres in batches by one
background task, off the response path; each is first appended to the local spool (spool.py), so
that a killed process's rows are replayed by the next one.

Nothing recorded is lost: a failed batch stays at the head of the queue and is retried with
backoff (a Postgres restart just delays it); rows are idempotent on request_id, so a batch that
committed but whose acknowledgement was lost is harmless to retry. Any error is logged, counted and
retried, and the writer task itself is restarted if it ever fails. The queue is bounded by
admission, not by dropping: past `max_pending` rows, or while the spool is full or its disk fails,
the proxy refuses new requests (529), while rows of requests already admitted are always accepted.
A row Postgres itself rejects is quarantined (usage_quarantine, else the spool's quarantine file),
never retried forever and never dropped without trace.

A row may carry the settlement of its request's limit reservation; it is applied in the same
statement as the row, and only if the row was new, so usage is counted against limits exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.queries import quarantine, settle, write_ledger_batch
from meter.db.rows import LedgerRow, Settlement
from meter.metrics import Metrics
from meter.spool import Claim, Spool, spooled_text

log = logging.getLogger("meter.ledger")

MAX_BACKOFF_S = 2.0
# A batch that keeps failing while Postgres answers is split to find the row it rejects.
FAILURES_BEFORE_SPLIT = 3
# How often the spools of dead sibling processes are looked for (they are at start too).
ADOPT_INTERVAL_S = 5.0

Entry = tuple[LedgerRow, Settlement | None, Claim | None]


class LedgerWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        metrics: Metrics,
        batch_rows: int = 500,
        flush_interval_s: float = 0.05,
        max_pending: int = 100_000,
        spool: Spool | None = None,
    ) -> None:
        self.spool = spool
        self._engine = engine
        self._metrics = metrics
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._max_pending = max_pending
        self._pending: deque[Entry] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._adopter: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def accepting(self) -> bool:
        """False while the backlog or the spool is full, or the spool's disk fails: new requests
        are refused until it passes."""
        if self.spool is not None and not self.spool.accepting(time.monotonic()):
            return False
        return len(self._pending) < self._max_pending

    def record_start(self, row: LedgerRow, settlement: Settlement | None) -> bool:
        """Spool the row a request gets if its process dies before it finishes; False if the
        spool cannot take it (the request is then refused)."""
        if self.spool is None:
            return True
        try:
            return self.spool.start(row, settlement, time.monotonic())
        except Exception:
            log.exception("ledger: the start of %s could not be spooled", row.request_id)
            return False

    def record(self, row: LedgerRow, settlement: Settlement | None = None) -> None:
        """Spool and queue one row (and its settlement). Never blocks and never fails: a row the
        spool cannot take still goes to Postgres from memory."""
        claim = None
        if self.spool is not None:
            try:
                claim = self.spool.finish(row, settlement, time.monotonic())
            except Exception:  # a row the spool cannot encode still goes to Postgres, or quarantine
                log.exception("ledger: row %s could not be spooled", row.request_id)
        self._pending.append((row, settlement, claim))
        self._metrics.ledger_pending.set(len(self._pending))
        if len(self._pending) >= self._batch_rows:
            self._wakeup.set()

    def start(self) -> None:
        if self.spool is not None:
            self.spool.open()
            self._adopt()
            self._adopter = asyncio.create_task(self._follow_dead_spools(), name="ledger-adopter")
        self._task = asyncio.create_task(self._supervise(), name="ledger-writer")

    async def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued; give up (and say how much) only after `timeout_s`: what is left
        stays in the spool for the next start."""
        self._closing = True
        self._wakeup.set()
        if self._adopter is not None:
            self._adopter.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:  # wait_for cancelled the writer: what it holds stays in the spool
                log.error("ledger: %d rows could not be written before shutdown", len(self._pending))
        if self.spool is not None:
            self.spool.close()

    def _adopt(self) -> None:
        assert self.spool is not None
        for adopted, claim in self.spool.adopt_dead():
            self._pending.extend((row, settlement, claim) for row, settlement in adopted.entries)
        self._metrics.ledger_pending.set(len(self._pending))
        self._wakeup.set()

    async def _follow_dead_spools(self) -> None:
        while True:
            await asyncio.sleep(ADOPT_INTERVAL_S)
            try:
                self._adopt()
            except Exception:
                log.exception("ledger: could not read back a dead process's spool; trying again")

    async def _supervise(self) -> None:
        """The writer must outlive any error of its own: it is logged, counted and restarted."""
        restarts = 0
        while True:
            try:
                await self._run()
                return
            except Exception:
                self._metrics.ledger_write_errors.inc()
                log.exception("ledger: the writer failed; restarting it")
                restarts += 1
                await asyncio.sleep(min(MAX_BACKOFF_S, 0.05 * 2**restarts))

    async def flush(self) -> None:
        """Wait until every row queued so far is written (tests and shutdown)."""
        while self._pending:
            self._wakeup.set()
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._flush_interval_s)
                continue
            batch = [self._pending[i] for i in range(min(self._batch_rows, len(self._pending)))]
            try:
                await self._write(batch)
            except Exception as exc:  # whatever it is, the writer must outlive it and say so
                failures += 1
                self._metrics.ledger_write_errors.inc()
                log.warning(
                    "ledger: write of %d rows failed (%s); retrying",
                    len(batch),
                    exc.__class__.__name__,
                    exc_info=not isinstance(exc, (DBAPIError, OSError)),
                )
                if failures >= FAILURES_BEFORE_SPLIT and await self._database_answers():
                    await self._write_one_by_one(batch)
                    failures = 0
                else:
                    await asyncio.sleep(min(MAX_BACKOFF_S, 0.05 * 2**failures))
                continue
            failures = 0
            self._discard(len(batch))
            if len(self._pending) < self._batch_rows and not self._closing:
                # Let a batch build up instead of writing rows one at a time under load.
                await asyncio.sleep(self._flush_interval_s)

    async def _write(self, batch: list[Entry]) -> None:
        started = time.perf_counter()
        settlements = [settlement for _, settlement, _ in batch if settlement]
        async with self._engine.connect() as conn:
            # One statement, atomic by itself: no BEGIN/COMMIT round trips.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await write_ledger_batch(conn, [row for row, _, _ in batch], settlements)
        # The pool's liveness ping and the statement, shared by every row of the batch.
        self._metrics.db_round_trips.labels("ledger_batch").inc(2)
        self._metrics.ledger_write_seconds.observe(time.perf_counter() - started)
        self._metrics.ledger_written.inc(len(batch))

    def _discard(self, count: int) -> None:
        for _ in range(count):
            _, _, claim = self._pending.popleft()
            if claim is not None:
                claim.written()
        self._metrics.ledger_pending.set(len(self._pending))

    async def _settle_alone(self, settlement: Settlement) -> None:
        """The usage of a refused row still counts against its limits, and its hold is released
        (the process would otherwise renew it forever)."""
        try:
            async with self._engine.begin() as conn:
                await settle(conn, [settlement])
        except Exception:
            log.exception("ledger: could not settle the hold of dropped row %s", settlement.request_id)

    async def _database_answers(self) -> bool:
        try:
            async with self._engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True

    async def _write_one_by_one(self, batch: list[Entry]) -> None:
        """Postgres is up but refuses the batch: write row by row and quarantine only what it rejects."""
        for entry in batch:
            row, settlement, _ = entry
            try:
                await self._write([entry])
            except Exception as exc:
                if not await self._database_answers():
                    return  # Postgres went away meanwhile: keep the rest queued
                await self._quarantine(row, settlement, exc)
                if settlement is not None:
                    await self._settle_alone(settlement)
            self._discard(1)

    async def _quarantine(self, row: LedgerRow, settlement: Settlement | None, error: Exception) -> None:
        """Keep a row Postgres rejected where the operator sees it: the usage_quarantine table, else
        the spool directory's quarantine file, else (never silently) the log."""
        # The driver's own words, without the statement (every column of the batch).
        reason = f"{error.__class__.__name__}: {getattr(error, 'orig', None) or error}"[:2000]
        try:
            record = spooled_text(row, settlement)
        except Exception:  # what made Postgres refuse it may make it unencodable too
            record = repr((row, settlement))
        self._metrics.ledger_quarantined.inc()
        try:
            async with self._engine.begin() as conn:
                await quarantine(conn, row.request_id, record, reason)
            log.error("ledger: row %s quarantined in usage_quarantine: %s", row.request_id, reason)
            return
        except Exception:
            log.exception("ledger: could not quarantine row %s in Postgres", row.request_id)
        if self.spool is not None and self.spool.quarantine(record, reason):
            log.error("ledger: row %s quarantined in %s: %s", row.request_id, self.spool.directory, reason)
            return
        self._metrics.ledger_dropped.inc()
        log.error("ledger: row %s could not be kept anywhere but here: %s (%s)", row.request_id, record, reason)
