"""Webhook events and their one emission: an event is a fact with a key that names it exactly
(which budget, which period, which threshold); it becomes one delivery row for each webhook that
subscribes to it, inserted ON CONFLICT DO NOTHING on (webhook, key). Every process may see the same
fact at once; the first insert wins and the others change nothing.

The body of every event, JSON with a stable schema (docs/webhooks.md):
`{"type": "budget.threshold", "timestamp": "2026-12-03T10:00:00Z", "data": {"tenant_id": …, …}}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.credentials import new_id
from meter.db.models import webhook_deliveries, webhooks

EVENT_TYPES = ("budget.threshold", "credit.low", "credit.exhausted", "key.expiring", "batch.ended")
# The webhook-id of a delivery (the same on every attempt).
DELIVERY_ID_KIND = "msg"


@dataclass(frozen=True)
class Event:
    type: str
    tenant_id: str
    # Names the fact: never emitted twice to one webhook.
    key: str
    data: dict[str, Any]
    # Only to this webhook (an event that depends on the webhook's own settings, like its credit floor).
    webhook_id: str | None = None


@dataclass(frozen=True)
class Subscriber:
    id: str
    event_types: frozenset[str]
    tenant_id: str | None
    credit_low_usd: Decimal

    def wants(self, event: Event) -> bool:
        return (
            event.type in self.event_types
            and (self.tenant_id is None or self.tenant_id == event.tenant_id)
            and (event.webhook_id is None or event.webhook_id == self.id)
        )


async def subscribers(conn: AsyncConnection) -> list[Subscriber]:
    rows = await conn.execute(
        select(webhooks.c.id, webhooks.c.event_types, webhooks.c.tenant_id, webhooks.c.credit_low_usd)
    )
    return [Subscriber(row.id, frozenset(row.event_types), row.tenant_id, row.credit_low_usd) for row in rows]


def body(event: Event, at: datetime) -> str:
    """The exact bytes every attempt of the event's deliveries sends (and signs)."""
    envelope = {"type": event.type, "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "data": event.data}
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True)


async def emit(
    conn: AsyncConnection, events: Iterable[Event], to: Sequence[Subscriber], at: datetime
) -> list[tuple[str, str]]:
    """Insert the deliveries of `events` to the subscribers that want them; (webhook id, event type)
    of each one this call created (those another process made first are not)."""
    rows = [
        {
            "id": new_id(DELIVERY_ID_KIND),
            "webhook_id": subscriber.id,
            "event_type": event.type,
            "dedup_key": event.key,
            "body": body(event, at),
        }
        for event in events
        for subscriber in to
        if subscriber.wants(event)
    ]
    if not rows:
        return []
    created = await conn.execute(
        insert(webhook_deliveries)
        .values(rows)
        .on_conflict_do_nothing(index_elements=[webhook_deliveries.c.webhook_id, webhook_deliveries.c.dedup_key])
        .returning(webhook_deliveries.c.webhook_id, webhook_deliveries.c.event_type)
    )
    return [(row.webhook_id, row.event_type) for row in created]
