"""Billing of message batches: a background task in every meter process polls the upstream for the
batches it has not billed yet and, once one has ended, reads its results file itself and writes one
ledger row per result, at the batch price (its usage says `service_tier: "batch"`), whether or not
the tenant ever downloads the results. Succeeded results are priced; errored, canceled and expired
ones cost nothing and are recorded as such.

Exactly once, across processes and restarts: a batch is taken under a lease (`billing_owner` until
`billing_until`, one statement that skips batches another process holds), each result's ledger row
has an id derived from the batch and the `custom_id` (a retried billing inserts nothing twice), and
the batch is marked billed only once its rows are written. The batch's hold is settled by its rows
(the first one releases it, each adds its actual cost), then released for certain at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.batches import store
from meter.db.models import batches
from meter.db.queries import settle
from meter.db.rows import LedgerRow, Settlement, billed_columns, stored_text
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.pricing import FREE, PriceTable
from meter.proxy.forward import Upstream
from meter.proxy.handler import ANTHROPIC_VERSION, UpstreamRequest
from meter.usage import Usage

log = logging.getLogger("meter.batches")
# How long a worker may hold a batch; one that dies gives it up after this (billing again is harmless).
LEASE_S = 120.0
_TAKE = text(
    """
UPDATE batches SET billing_owner = :owner, billing_until = now() + make_interval(secs => :lease)
WHERE id = (
    SELECT id FROM batches
    WHERE billed_at IS NULL AND (billing_until IS NULL OR billing_until < now())
      AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => :every) OR CAST(:id AS text) IS NOT NULL)
      AND (CAST(:id AS text) IS NULL OR id = CAST(:id AS text))
    ORDER BY checked_at NULLS FIRST LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING *
"""
)


def result_request_id(batch_id: str, created_at: datetime, custom_id: str) -> str:
    """The ledger id of one result: time-ordered like every request id (the batch's creation),
    and the same however often the batch is billed."""
    digest = hashlib.sha256(f"{batch_id}\n{custom_id}".encode()).hexdigest()[:16]
    return f"req_{int(created_at.timestamp() * 1000):012x}{digest}"


class BatchBilling:
    def __init__(
        self,
        engine: AsyncEngine,
        upstream: Upstream,
        ledger: LedgerWriter,
        prices: PriceTable,
        metrics: Metrics,
        poll_s: float,
    ) -> None:
        self._engine = engine
        self._upstream = upstream
        self._ledger = ledger
        self._prices = prices
        self._metrics = metrics
        self._poll_s = poll_s
        self._owner = "billing_" + secrets.token_hex(6)

    async def run(self) -> None:
        """Poll and bill until cancelled; an error is logged, counted and retried next round."""
        while True:
            try:
                while await self._step(None):
                    pass
                async with self._engine.connect() as conn:
                    self._metrics.batches_unbilled.set(await store.unbilled_count(conn))
            except Exception:
                self._metrics.batch_billing_errors.inc()
                log.exception("batch billing failed; retrying")
            await asyncio.sleep(self._poll_s)

    async def bill_now(self, batch_id: str) -> None:
        """Bill this batch now if it has ended (before it is deleted); another process billing it is waited for."""
        for _ in range(int(LEASE_S)):
            if not await self._held_elsewhere(batch_id):
                await self._step(batch_id)
                return
            await asyncio.sleep(1.0)

    async def _held_elsewhere(self, batch_id: str) -> bool:
        query = select(batches.c.billed_at.is_(None) & (batches.c.billing_until > func.now())).where(
            batches.c.id == batch_id
        )
        async with self._engine.connect() as conn:
            return bool((await conn.execute(query)).scalar())

    async def _step(self, batch_id: str | None) -> bool:
        """Take one due batch (or this one), refresh it, bill it if it ended; False if none was due."""
        async with self._engine.begin() as conn:
            taken = (
                (
                    await conn.execute(
                        _TAKE, {"owner": self._owner, "lease": LEASE_S, "every": self._poll_s, "id": batch_id}
                    )
                )
                .mappings()
                .first()
            )
        if taken is None:
            return False
        batch = dict(taken)
        try:
            obj = await self._fetch_object(batch["id"])
            async with self._engine.begin() as conn:
                await store.seen(conn, obj)
            if obj.get("processing_status") == "ended":
                await self._bill(batch)
        finally:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(batches)
                    .where(batches.c.id == batch["id"], batches.c.billing_owner == self._owner)
                    .values(billing_owner=None, billing_until=None, checked_at=func.now())
                )
        return True

    def _call(self, path: str) -> UpstreamRequest:
        headers = [*self._upstream.request_headers([]), (b"anthropic-version", ANTHROPIC_VERSION)]
        return UpstreamRequest("GET", path, b"", headers, b"")

    async def _fetch_object(self, batch_id: str) -> dict[str, Any]:
        response = await self._upstream.send(self._call(f"/v1/messages/batches/{batch_id}"))
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        if response.status_code != 200:
            raise RuntimeError(f"the upstream answered {response.status_code} for batch {batch_id}")
        obj: dict[str, Any] = msgspec.json.decode(body)
        return obj

    async def _bill(self, batch: dict[str, Any]) -> None:
        response = await self._upstream.send(self._call(f"/v1/messages/batches/{batch['id']}/results"))
        rows = 0
        try:
            if response.status_code != 200:
                raise RuntimeError(f"the upstream answered {response.status_code} for the results of {batch['id']}")
            pending = b""
            async for chunk in response.aiter_raw():
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    rows += self._record(batch, line)
            rows += self._record(batch, pending)
        finally:
            await response.aclose()
        await self._ledger.flush()
        async with self._engine.begin() as conn:
            if batch["hold_id"]:
                # Rows settle the hold; a batch with no priced result releases it here (adding nothing).
                await settle(conn, [self._settlement(batch, batch["id"], 0, Decimal(0))])
            await conn.execute(
                update(batches).where(batches.c.id == batch["id"]).values(billed_at=func.now(), billed_rows=rows)
            )
        self._metrics.batch_results_billed.inc(rows)
        log.info("batch %s billed: %d result rows", batch["id"], rows)

    def _record(self, batch: dict[str, Any], line: bytes) -> int:
        if not line.strip():
            return 0
        entry = msgspec.json.decode(line)
        custom_id = str(entry.get("custom_id", ""))
        result = entry.get("result") or {}
        kind = result.get("type")
        message = result.get("message") if kind == "succeeded" else None
        usage = Usage()
        model = batch["request_models"].get(custom_id)
        answered = None
        if isinstance(message, dict):
            usage.update(message.get("usage"))
            answered = message.get("model") if isinstance(message.get("model"), str) else None
        started, ended = batch["created_at"], datetime.now(UTC)
        price = self._prices.price_of_call(model, answered, started)
        # Errored, canceled and expired requests cost nothing; a succeeded one of an unpriced model: null.
        cost = FREE if message is None else price.cost(usage) if price is not None else None
        row = LedgerRow(
            request_id=result_request_id(batch["id"], started, custom_id),
            tenant_id=batch["tenant_id"],
            key_id=batch["key_id"],
            model=model,
            endpoint="batches",
            stream=False,
            status=200 if kind == "succeeded" else 400 if kind == "errored" else 0,
            error_type=None if kind == "succeeded" else stored_text(kind),
            **billed_columns(usage, cost),
            partial=False,
            stop_reason=message.get("stop_reason") if isinstance(message, dict) else None,
            upstream_request_id=f"{batch['id']}/{custom_id}",  # the result, as the upstream names it
            started_at=started,
            finished_at=max(ended, started),
            duration_ms=max(0, int((ended - started) / timedelta(milliseconds=1))),
            ttfb_ms=None,
            response_model=stored_text(answered),
        )
        settlement = None
        if batch["hold_id"] and message is not None:
            settlement = self._settlement(batch, row.request_id, usage.total_tokens, row.cost_usd or Decimal(0))
        self._ledger.record(row, settlement)
        return 1

    def _settlement(self, batch: dict[str, Any], request_id: str, tokens: int, usd: Decimal) -> Settlement:
        """A share of the batch's hold: the ledger writer applies it only with its row's first insert."""
        return Settlement(
            hold=batch["hold_id"],
            request_id=request_id,
            subjects=list(batch["hold_subjects"] or []),
            day=batch["hold_day"].isoformat(),
            month=batch["hold_month"].isoformat(),
            tokens=tokens,
            usd=usd,
        )
