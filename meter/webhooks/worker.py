"""The webhook work of one process, as one task: look for events every METER_WEBHOOK_CHECK_S and
send what is due every METER_WEBHOOK_POLL_S. One task, so webhooks hold at most one database
connection of the process's pool at a time (none while a receiver is being called)."""

from __future__ import annotations

import asyncio
import logging
import time

from meter.webhooks.checker import Checker
from meter.webhooks.delivery import CLAIM_BATCH, Deliverer

log = logging.getLogger("meter.webhooks")


async def run(checker: Checker, deliverer: Deliverer, check_s: float, poll_s: float) -> None:
    next_check = 0.0
    try:
        while True:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + check_s
                try:
                    await checker.check_once()
                except Exception:
                    log.exception("webhook check failed; trying again in %s s", check_s)
            try:
                while await deliverer.deliver_due() == CLAIM_BATCH:
                    pass  # more are due: no pause
            except Exception:
                log.exception("webhook delivery failed; trying again in %s s", poll_s)
            await asyncio.sleep(max(0.0, min(poll_s, next_check - time.monotonic())))
    finally:
        await deliverer.aclose()
