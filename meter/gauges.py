"""Gauges read from Postgres rather than counted: each tenant's budget use and prepaid credit, for
the billing dashboard and the near-budget alert."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.queries import tenant_budgets
from meter.metrics import Metrics

log = logging.getLogger("meter.gauges")
REPORT_S = 5.0


async def report_budgets(engine: AsyncEngine, metrics: Metrics) -> None:
    """Refresh the gauges every REPORT_S; runs until cancelled."""
    while True:
        try:
            async with engine.connect() as conn:
                rows = await tenant_budgets(conn)
            for row in rows:
                tenant = metrics.tenant_label(row["tenant_id"])
                for period in ("day", "month"):
                    budget = row[f"budget_usd_per_{period}"]
                    if budget is not None:
                        used = row[f"{period}_usd"]
                        metrics.budget_used.labels(tenant, period).set(float(used / budget) if budget else 1.0)
                if row["credit_balance_usd"] is not None:
                    metrics.credit_balance.labels(tenant).set(float(row["credit_balance_usd"]))
        except Exception:  # the gauges just go stale until the next try
            log.warning("budget gauges refresh failed", exc_info=True)
        await asyncio.sleep(REPORT_S)
