"""Webhooks: the operator's receivers of budget, credit, key and batch events (meter/webhooks).

Created with a URL and the event types it wants (of one tenant, or every tenant); the signing
secret is shown once, on create and on rotate, never in a list. Every change is audited. The
service functions here are what the API, and the console, show: webhooks and their recent
deliveries.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import msgspec
from litestar import Controller, delete, get, post
from litestar.params import Parameter
from sqlalchemy import delete as delete_rows
from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money
from meter.admin import audit
from meter.admin.schema import ERRORS, Text, Usd, check_usd
from meter.admin.tenants import get_tenant
from meter.credentials import new_id
from meter.db.models import webhook_deliveries, webhooks
from meter.errors import InvalidRequest, NotFound
from meter.webhooks.events import EVENT_TYPES
from meter.webhooks.signing import new_secret

MAX_URL_LENGTH = 2048
DEFAULT_CREDIT_LOW_USD = Decimal(10)
EventType = Annotated[str, msgspec.Meta(pattern="^(" + "|".join(t.replace(".", "\\.") for t in EVENT_TYPES) + ")$")]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_LENGTH)]
    event_types: Annotated[list[EventType], msgspec.Meta(min_length=1)]
    # Only this tenant's events; absent: every tenant's.
    tenant_id: Text | None = None
    description: Text | None = None
    # credit.low fires when a prepaid balance falls to this or below.
    credit_low_usd: Usd | None = None

    def __post_init__(self) -> None:
        check_usd("credit_low_usd", self.credit_low_usd)


class SecretRotate(msgspec.Struct, forbid_unknown_fields=True):
    # How long attempts are signed with the previous secret as well; 0 stops it at once.
    grace_period_s: Annotated[int, msgspec.Meta(ge=0, le=7 * 24 * 3600)] = 3600


class Webhook(msgspec.Struct):
    id: str
    url: str
    event_types: list[str]
    tenant_id: str | None
    description: str | None
    credit_low_usd: str
    created_at: datetime
    secret_rotated_at: datetime | None


class WebhookWithSecret(Webhook):
    secret: str  # `whsec_…`: returned on create and rotate, never again


class WebhookPage(msgspec.Struct):
    data: list[Webhook]
    next_cursor: str | None


class Delivery(msgspec.Struct):
    id: str  # the webhook-id header of every attempt
    webhook_id: str
    event_type: str
    status: str  # pending, delivered, failed (given up)
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    payload: dict[str, Any]


class DeliveryPage(msgspec.Struct):
    data: list[Delivery]
    next_cursor: str | None


_PUBLIC = [webhooks.c[name] for name in Webhook.__struct_fields__]


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host, no credentials and no fragment; else InvalidRequest."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest("url: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url: must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url: must not carry credentials")
    if parts.fragment or not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidRequest("url: must have no fragment, spaces or control characters")
    if port == 0:
        raise InvalidRequest("url: port 0 is not a port")
    try:
        # What the sender will do with it: international names by IDNA.
        host = httpx.URL(url).host
    except (httpx.InvalidURL, ValueError):
        host = ""
    if not host:
        raise InvalidRequest("url: the host is not a valid name")
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        if not all(label and len(label) < 64 for label in parts.hostname.rstrip(".").split(".")):
            raise InvalidRequest("url: the host is not a valid name") from None
    return url


def _view(row: Any) -> Webhook:
    values = {name: row[name] for name in Webhook.__struct_fields__}
    values["credit_low_usd"] = money.usd(row["credit_low_usd"])
    return Webhook(**values)


async def create_webhook(conn: AsyncConnection, spec: WebhookCreate, actor: str) -> WebhookWithSecret:
    check_url(spec.url)
    if spec.tenant_id is not None:
        await get_tenant(conn, spec.tenant_id)
    secret = new_secret()
    values = {
        "id": new_id("wh"),
        "url": spec.url,
        "event_types": sorted(set(spec.event_types)),
        "tenant_id": spec.tenant_id,
        "description": spec.description,
        "credit_low_usd": DEFAULT_CREDIT_LOW_USD if spec.credit_low_usd is None else spec.credit_low_usd,
        "secret": secret,
    }
    row = (await conn.execute(insert(webhooks).values(**values).returning(*_PUBLIC))).mappings().one()
    details = {name: values[name] for name in ("url", "event_types", "tenant_id", "description")}
    await audit.record(conn, actor, "webhook.create", row["id"], details)
    view = _view(row)
    return WebhookWithSecret(**msgspec.structs.asdict(view), secret=secret)


async def list_webhooks(
    conn: AsyncConnection, after: str | None, limit: int, tenant_id: str | None = None
) -> WebhookPage:
    """Webhooks oldest first; with `tenant_id`, those that hear of that tenant (its own and the
    ones of every tenant)."""
    query = select(*_PUBLIC).order_by(webhooks.c.id).limit(limit + 1)
    if tenant_id is not None:
        query = query.where(or_(webhooks.c.tenant_id == tenant_id, webhooks.c.tenant_id.is_(None)))
    if after:
        query = query.where(webhooks.c.id > after)
    rows = (await conn.execute(query)).mappings().all()
    next_cursor = rows[limit - 1]["id"] if len(rows) > limit else None
    return WebhookPage(data=[_view(row) for row in rows[:limit]], next_cursor=next_cursor)


async def get_webhook(conn: AsyncConnection, webhook_id: str) -> Webhook:
    row = (await conn.execute(select(*_PUBLIC).where(webhooks.c.id == webhook_id))).mappings().first()
    if row is None:
        raise NotFound(f"No webhook with id {webhook_id!r}.")
    return _view(row)


async def delete_webhook(conn: AsyncConnection, webhook_id: str, actor: str) -> Webhook:
    """Delete a webhook and its deliveries: nothing more is sent to it. Returns what was deleted."""
    deleted = await conn.execute(delete_rows(webhooks).where(webhooks.c.id == webhook_id).returning(*_PUBLIC))
    row = deleted.mappings().first()
    if row is None:
        raise NotFound(f"No webhook with id {webhook_id!r}.")
    await audit.record(conn, actor, "webhook.delete", webhook_id, {"url": row["url"]})
    return _view(row)


async def rotate_secret(conn: AsyncConnection, webhook_id: str, rotate: SecretRotate, actor: str) -> WebhookWithSecret:
    """A new signing secret, used from the next attempt on (retries of earlier events included);
    the previous one signs too for the grace period."""
    secret = new_secret()
    changed = (
        update(webhooks)
        .where(webhooks.c.id == webhook_id)
        .values(
            previous_secret=webhooks.c.secret,
            previous_valid_until=func.now() + timedelta(seconds=rotate.grace_period_s),
            secret=secret,
            secret_rotated_at=func.now(),
        )
        .returning(*_PUBLIC)
    )
    row = (await conn.execute(changed)).mappings().first()
    if row is None:
        raise NotFound(f"No webhook with id {webhook_id!r}.")
    await audit.record(conn, actor, "webhook.rotate_secret", webhook_id, {"grace_period_s": rotate.grace_period_s})
    return WebhookWithSecret(**msgspec.structs.asdict(_view(row)), secret=secret)


async def list_deliveries(conn: AsyncConnection, webhook_id: str, before: str | None, limit: int) -> DeliveryPage:
    """A webhook's deliveries, newest first; `before` is the previous page's next_cursor."""
    await get_webhook(conn, webhook_id)
    d = webhook_deliveries.c
    query = select(webhook_deliveries).where(d.webhook_id == webhook_id).order_by(d.id.desc()).limit(limit + 1)
    if before:
        query = query.where(d.id < before)
    rows = (await conn.execute(query)).mappings().all()
    data = [
        Delivery(
            id=row["id"],
            webhook_id=row["webhook_id"],
            event_type=row["event_type"],
            status=row["status"],
            attempts=row["attempts"],
            created_at=row["created_at"],
            next_attempt_at=row["next_attempt_at"] if row["status"] == "pending" else None,
            last_attempt_at=row["last_attempt_at"],
            last_status_code=row["last_status_code"],
            last_error=row["last_error"],
            delivered_at=row["delivered_at"],
            payload=msgspec.json.decode(row["body"]),
        )
        for row in rows[:limit]
    ]
    return DeliveryPage(data=data, next_cursor=rows[limit - 1]["id"] if len(rows) > limit else None)


Limit = Annotated[int, Parameter(ge=1, le=1000)]


class WebhookController(Controller):
    path = "/webhooks"

    @post("/", summary="Create a webhook; its signing secret is in `secret`, shown once", responses=ERRORS)
    async def create(self, data: WebhookCreate, db: AsyncEngine, actor: str) -> WebhookWithSecret:
        async with db.begin() as conn:
            return await create_webhook(conn, data, actor)

    @get("/", summary="The webhooks (never their secrets); tenant_id: those that hear of it", responses=ERRORS)
    async def list(
        self, db: AsyncEngine, after: str | None = None, limit: Limit = 100, tenant_id: str | None = None
    ) -> WebhookPage:
        async with db.connect() as conn:
            return await list_webhooks(conn, after, limit, tenant_id)

    @get("/{webhook_id:str}", summary="One webhook", responses=ERRORS)
    async def show(self, webhook_id: str, db: AsyncEngine) -> Webhook:
        async with db.connect() as conn:
            return await get_webhook(conn, webhook_id)

    @delete("/{webhook_id:str}", summary="Delete a webhook and its deliveries", status_code=200, responses=ERRORS)
    async def remove(self, webhook_id: str, db: AsyncEngine, actor: str) -> Webhook:
        async with db.begin() as conn:
            return await delete_webhook(conn, webhook_id, actor)

    @post(
        "/{webhook_id:str}/rotate",
        summary="A new signing secret, shown once; the old one also signs for grace_period_s",
        status_code=200,
        responses=ERRORS,
    )
    async def rotate(
        self, webhook_id: str, db: AsyncEngine, actor: str, data: SecretRotate | None = None
    ) -> WebhookWithSecret:
        async with db.begin() as conn:
            return await rotate_secret(conn, webhook_id, data or SecretRotate(), actor)

    @get("/{webhook_id:str}/deliveries", summary="A webhook's deliveries, newest first", responses=ERRORS)
    async def deliveries(
        self, webhook_id: str, db: AsyncEngine, before: str | None = None, limit: Limit = 50
    ) -> DeliveryPage:
        async with db.connect() as conn:
            return await list_deliveries(conn, webhook_id, before, limit)
