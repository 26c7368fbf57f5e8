"""The price table: what each model costs now, what is scheduled, and a form for a model's token
prices. A new price keeps the rest of the model's current one (server-tool fees, multipliers,
long-context prices, context window); those are edited with PUT /admin/prices or `meter prices import`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.admin.audit import CONSOLE_ACTOR
from meter.admin.prices import PriceUpdate, PriceView, list_prices, set_prices
from meter.console import forms
from meter.console.render import page, redirect
from meter.pricing import TOKEN_PRICES, PriceTable

KEPT = ("server_tool_fees", "multipliers", "long_context", "context_window", "max_output_tokens")


def current_and_scheduled(views: list[PriceView], now: datetime) -> tuple[list[PriceView], list[PriceView]]:
    """Per model, the price in effect now; and every price that takes effect later."""
    current: dict[str, PriceView] = {}
    for view in views:  # ordered by model, then effective_from
        if view.effective_from <= now:
            current[view.model] = view
    return sorted(current.values(), key=lambda v: v.model), [v for v in views if v.effective_from > now]


def price_spec(form: Any, views: list[PriceView]) -> PriceUpdate:
    model = forms.text(form, "model")
    start = forms.moment(form, "effective_from") or datetime.now(UTC)
    earlier = [view for view in views if view.model == model and view.effective_from <= start]
    base = msgspec.to_builtins(earlier[-1]) if earlier else {}
    values: dict[str, Any] = {name: base[name] for name in KEPT if name in base}
    values |= {name: forms.optional(form, name) for name in TOKEN_PRICES}
    values |= {"model": model, "effective_from": start}
    for name in ("input_per_mtok", "output_per_mtok"):
        if values[name] is None:
            raise forms.FormError(f"{name}: give a price in USD per million tokens, e.g. 3 or 0.80")
    return forms.convert({"prices": [values]}, PriceUpdate)


async def _render(
    request: Request[Any, Any, Any], db: AsyncEngine, done: bool = False, error: str | None = None, status: int = 200
) -> Response[Any]:
    async with db.connect() as conn:
        views = (await list_prices(conn)).data
    current, scheduled = current_and_scheduled(views, datetime.now(UTC))
    return page(
        request,
        "prices.html",
        status=status,
        title="Prices",
        current=current,
        scheduled=scheduled,
        notice="Price saved. It applies to requests that start from its effective time." if done else None,
        error=error,
    )


class PricesController(Controller):
    path = "/console/prices"

    @get("", include_in_schema=False)
    async def show(self, request: Request[Any, Any, Any], db: AsyncEngine, done: bool = False) -> Response[Any]:
        return await _render(request, db, done=done)

    @post("", include_in_schema=False)
    async def set(self, request: Request[Any, Any, Any], db: AsyncEngine, price_table: PriceTable) -> Response[Any]:
        form = await request.form()
        try:
            async with db.begin() as conn:
                update = price_spec(form, (await list_prices(conn)).data)
                await set_prices(conn, update, CONSOLE_ACTOR)
        except forms.INPUT_ERRORS as exc:
            return await _render(request, db, error=forms.message(exc), status=400)
        await price_table.load(db)  # this process at once; the others within a second
        return redirect("/console/prices?done=true")
