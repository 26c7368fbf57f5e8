"""Webhooks and their recent deliveries, as the operator API lists them (create, rotate and delete
stay with the API and the CLI, where the signing secret is shown once)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.admin.webhooks import get_webhook, list_deliveries, list_webhooks
from meter.console.render import page

PAGE_SIZE = 100
RECENT_DELIVERIES = 50


class WebhooksController(Controller):
    path = "/console/webhooks"

    @get("", include_in_schema=False)
    async def show(self, request: Request[Any, Any, Any], db: AsyncEngine) -> Response[Any]:
        async with db.connect() as conn:
            hooks = await list_webhooks(conn, None, PAGE_SIZE)
        return page(request, "webhooks.html", title="Webhooks", webhooks=hooks)

    @get("/{webhook_id:str}", include_in_schema=False)
    async def deliveries(self, request: Request[Any, Any, Any], db: AsyncEngine, webhook_id: str) -> Response[Any]:
        async with db.connect() as conn:
            hook = await get_webhook(conn, webhook_id)
            recent = await list_deliveries(conn, webhook_id, None, RECENT_DELIVERIES)
        return page(request, "webhook.html", title=f"Webhook {hook.url}", webhook=hook, deliveries=recent)
