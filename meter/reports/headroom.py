"""`GET /v1/meter/limits`: the caller's own limits (its tenant's and its key's), what is used of
each daily and monthly one, what remains and when it resets, and its prepaid credit. Usage is what
has settled (the `limits` table's counters); requests in flight are not in it yet. Per-minute and
concurrency limits show only the limit: their live state is in every reply's rate-limit headers."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from meter import money, periods
from meter.admin.credit import read_balance
from meter.admin.limits import PeriodUsage, read_limits
from meter.db.models import LIMIT_SETTINGS
from meter.proxy.auth import Caller

PERIODS = {
    "requests_per_minute": "minute",
    "tokens_per_minute": "minute",
    "max_concurrent_requests": None,
    "tokens_per_day": "day",
    "tokens_per_month": "month",
    "budget_usd_per_day": "day",
    "budget_usd_per_month": "month",
}


async def headroom(conn: AsyncConnection, caller: Caller) -> dict[str, Any]:
    today = periods.today()
    resets = {
        "day": _rfc3339(date.fromordinal(today.toordinal() + 1)),
        "month": _rfc3339(periods.next_month(today)),
    }
    limits: list[dict[str, Any]] = []
    for applies_to, subject_id in (("tenant", caller.tenant_id), ("key", caller.key_id)):
        view = await read_limits(conn, subject_id)
        for name in LIMIT_SETTINGS:
            limit = getattr(view, name)
            if limit is None:
                continue
            period = PERIODS[name]
            item: dict[str, Any] = {
                "applies_to": applies_to,
                "name": name,
                "period": period,
                "limit": limit,
                "used": None,
                "remaining": None,
                "resets_at": resets.get(period or ""),
            }
            if period in ("day", "month"):
                item.update(_used(limit, view.today if period == "day" else view.this_month, name.startswith("budget")))
            limits.append(item)
    balance = await read_balance(conn, caller.tenant_id)
    credit = None
    if balance.prepaid:
        credit = {
            "balance_usd": balance.balance_usd,
            "held_usd": balance.held_usd,
            "available_usd": balance.available_usd,
        }
    return {
        "type": "limits",
        "tenant_id": caller.tenant_id,
        "key_id": caller.key_id,
        "limits": limits,
        "credit": credit,
    }


def _used(limit: Any, usage: PeriodUsage, usd: bool) -> dict[str, Any]:
    if usd:
        used = Decimal(usage.cost_usd)
        return {"used": money.usd(used), "remaining": money.usd(max(Decimal(limit) - used, Decimal(0)))}
    return {"used": usage.tokens, "remaining": max(int(limit) - usage.tokens, 0)}


def _rfc3339(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"
