"""What is true now that a webhook should hear of, read every METER_WEBHOOK_CHECK_S by every
process, after usage has settled (the `limits` table's settled columns, never what is held):

- `budget.threshold`: a daily or monthly budget or token quota of a tenant or a key is used to
  50, 80 or 100 % (once per subject, limit, period and threshold, and again if the operator sets
  the limit to another value);
- `credit.low` / `credit.exhausted`: a prepaid balance is at or below the webhook's floor / at or
  below 0 (once per top-up: a positive credit transaction starts a new episode, an adjustment
  down does not);
- `key.expiring`: an active key expires within 7 days (once per key and expiry time);
- `batch.ended`: a message batch ended and its results were billed (once per batch).

The facts become events; events.emit makes each one delivery per webhook, once across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money, periods
from meter.db.models import api_keys, batches, credit_transactions, limits, webhook_deliveries
from meter.metrics import Metrics
from meter.webhooks.events import Event, Subscriber, emit, subscribers

log = logging.getLogger("meter.webhooks")

THRESHOLDS = (50, 80, 100)
# (limit, period, settled usage column, unit)
QUOTAS = (
    ("tokens_per_day", "day", "day_tokens", "tokens"),
    ("tokens_per_month", "month", "month_tokens", "tokens"),
    ("budget_usd_per_day", "day", "day_usd", "usd"),
    ("budget_usd_per_month", "month", "month_usd", "usd"),
)
KEY_EXPIRY_NOTICE = timedelta(days=7)
# Batches billed this recently are looked at (a process down longer than this misses none: another
# process, or this one on restart within the window, emits them).
BATCH_WINDOW = timedelta(days=1)
# Events this process knows exist are not inserted again; forgotten past this many.
MEMORY = 100_000


async def budget_thresholds(conn: AsyncConnection, now: datetime) -> list[Event]:
    today = now.date()
    month = periods.month_start(today)
    day_limited = or_(limits.c.tokens_per_day > 0, limits.c.budget_usd_per_day > 0)
    month_limited = or_(limits.c.tokens_per_month > 0, limits.c.budget_usd_per_month > 0)
    rows = await conn.execute(
        select(limits).where(
            or_(and_(limits.c.day == today, day_limited), and_(limits.c.month == month, month_limited))
        )
    )
    events = []
    for row in rows.mappings():
        for name, period, used_column, unit in QUOTAS:
            limit, start, used = row[name], row[period], row[used_column]
            if limit is None or limit <= 0 or start != (today if period == "day" else month):
                continue
            for threshold in THRESHOLDS:
                if used * 100 < limit * threshold:
                    break
                subject = row["subject_id"]
                data = {
                    "tenant_id": row["tenant_id"],
                    "key_id": subject if subject.startswith("key_") else None,
                    "limit": name,
                    "unit": unit,
                    "period": period,
                    "period_start": start.isoformat(),
                    "threshold_percent": threshold,
                    "limit_value": _amount(limit, unit),
                    "used": _amount(used, unit),
                }
                # The limit's value is part of the fact: a budget the operator changes is a new one.
                key = f"budget.threshold:{subject}:{name}:{start.isoformat()}:{data['limit_value']}:{threshold}"
                events.append(Event("budget.threshold", row["tenant_id"], key, data))
    return events


def _amount(value: Any, unit: str) -> Any:
    return money.decimal_text(value) if unit == "usd" else int(value)


async def credit(conn: AsyncConnection, to: Sequence[Subscriber]) -> list[Event]:
    floors = [s for s in to if "credit.low" in s.event_types]
    highest = max([s.credit_low_usd for s in floors], default=Decimal(0))
    episode = (
        select(func.max(credit_transactions.c.id))
        .where(credit_transactions.c.tenant_id == limits.c.tenant_id, credit_transactions.c.amount_usd > 0)
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(limits.c.tenant_id, limits.c.credit_balance_usd, episode.label("episode")).where(
            limits.c.subject_id == limits.c.tenant_id,
            limits.c.credit_balance_usd.is_not(None),
            limits.c.credit_balance_usd <= highest,
        )
    )
    events = []
    for tenant_id, balance, top_up in rows:
        data = {"tenant_id": tenant_id, "balance_usd": money.decimal_text(balance)}
        if balance <= 0:
            events.append(Event("credit.exhausted", tenant_id, f"credit.exhausted:{tenant_id}:{top_up}", data))
        for webhook in floors:
            if balance <= webhook.credit_low_usd:
                low = {**data, "floor_usd": money.decimal_text(webhook.credit_low_usd)}
                key = f"credit.low:{tenant_id}:{top_up}"
                events.append(Event("credit.low", tenant_id, key, low, webhook_id=webhook.id))
    return events


async def keys_expiring(conn: AsyncConnection, now: datetime) -> list[Event]:
    rows = await conn.execute(
        select(api_keys.c.id, api_keys.c.tenant_id, api_keys.c.name, api_keys.c.prefix, api_keys.c.expires_at).where(
            api_keys.c.status == "active",
            api_keys.c.expires_at > now,
            api_keys.c.expires_at <= now + KEY_EXPIRY_NOTICE,
        )
    )
    events = []
    for key_id, tenant_id, name, prefix, expires_at in rows:
        expiry = expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = {"tenant_id": tenant_id, "key_id": key_id, "name": name, "prefix": prefix, "expires_at": expiry}
        events.append(Event("key.expiring", tenant_id, f"key.expiring:{key_id}:{expiry}", data))
    return events


async def batches_ended(conn: AsyncConnection, now: datetime) -> list[Event]:
    rows = await conn.execute(
        select(batches.c.id, batches.c.tenant_id, batches.c.key_id, batches.c.object, batches.c.billed_rows).where(
            batches.c.billed_at >= now - BATCH_WINDOW
        )
    )
    events = []
    for batch_id, tenant_id, key_id, upstream, billed_rows in rows:
        data = {
            "tenant_id": tenant_id,
            "key_id": key_id,
            "batch_id": batch_id,
            "processing_status": upstream.get("processing_status"),
            "request_counts": upstream.get("request_counts"),
            "ended_at": upstream.get("ended_at"),
            "billed_results": billed_rows,
        }
        events.append(Event("batch.ended", tenant_id, f"batch.ended:{batch_id}", data))
    return events


async def facts(conn: AsyncConnection, now: datetime, to: Sequence[Subscriber]) -> list[Event]:
    """The events true now, of the types some webhook subscribes to."""
    wanted = frozenset().union(*(s.event_types for s in to))
    events: list[Event] = []
    if "budget.threshold" in wanted:
        events += await budget_thresholds(conn, now)
    if wanted & {"credit.low", "credit.exhausted"}:
        events += await credit(conn, to)
    if "key.expiring" in wanted:
        events += await keys_expiring(conn, now)
    if "batch.ended" in wanted:
        events += await batches_ended(conn, now)
    return events


class Checker:
    """The check of one process (worker.py runs it every METER_WEBHOOK_CHECK_S)."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics
        self._known: set[tuple[str, str]] = set()

    async def check_once(self) -> int:
        """Emit what is new; the number of deliveries this process created."""
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            to = await subscribers(conn)
            events = [
                event
                for event in await facts(conn, now, to)
                if any(s.wants(event) and (s.id, event.key) not in self._known for s in to)
            ]
            created = await emit(conn, events, to, now)
            backlog = (
                await conn.execute(select(func.count()).where(webhook_deliveries.c.status == "pending"))
            ).scalar_one()
        if len(self._known) > MEMORY:
            self._known.clear()
        self._known.update((s.id, event.key) for event in events for s in to if s.wants(event))
        for _, event_type in created:
            self._metrics.webhook_events.labels(event_type).inc()
        self._metrics.webhook_backlog.set(backlog)
        return len(created)
