"""Delivering webhook events: at least once, with the same webhook-id on every attempt.

Every process runs one (worker.py). It claims due deliveries in one statement (FOR UPDATE SKIP LOCKED, so
two processes never take the same one) that also pushes their next attempt past the send timeout:
that is the lease. A worker that dies mid-attempt leaves the delivery due again when the lease
ends; one that finishes records the outcome: delivered (any 2xx), or the next attempt after the
schedule's pause (METER_WEBHOOK_RETRY_S), or given up after the last. Each attempt is signed anew
with its own timestamp, over the same body.

The receiver's URL is the operator's input, but its answers are not trusted: redirects are not
followed (a 3xx is a failure), an attempt is cut off after METER_WEBHOOK_TIMEOUT_S, and at most
RESPONSE_LIMIT bytes of an answer are read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from sqlalchemy import Update, func, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from meter import __version__
from meter.db.models import webhook_deliveries
from meter.metrics import Metrics
from meter.webhooks import signing

log = logging.getLogger("meter.webhooks")

RESPONSE_LIMIT = 4096
CLAIM_BATCH = 20
# The lease outlasts an attempt by this much (clock skew, a slow database).
LEASE_MARGIN_S = 30.0

_CLAIM = text(
    """
    UPDATE webhook_deliveries AS d
    SET attempts = d.attempts + 1, last_attempt_at = clock_timestamp(),
        next_attempt_at = clock_timestamp() + make_interval(secs => :lease)
    FROM webhooks AS w
    WHERE w.id = d.webhook_id AND d.id IN (
        SELECT id FROM webhook_deliveries
        WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()
        ORDER BY next_attempt_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    RETURNING d.id, d.body, d.attempts, w.url, w.secret,
        CASE WHEN w.previous_valid_until > clock_timestamp() THEN w.previous_secret END
    """
)


@dataclass(frozen=True)
class Attempt:
    id: str
    body: str
    attempt: int
    url: str
    secret: str
    # The secret before a rotation, during its grace period.
    previous_secret: str | None


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status_code: int | None
    error: str | None


class Deliverer:
    def __init__(self, engine: AsyncEngine, metrics: Metrics, timeout_s: float, retry_s: Sequence[float]) -> None:
        self._engine = engine
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._retry_s = tuple(retry_s)
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            headers={"user-agent": f"meter-webhooks/{__version__}"},
            trust_env=False,
        )

    async def deliver_due(self) -> int:
        """Claim what is due, send it, record the outcomes; how many attempts were made."""
        async with self._engine.begin() as conn:
            claimed = await conn.execute(_CLAIM, {"lease": self._timeout_s + LEASE_MARGIN_S, "batch": CLAIM_BATCH})
            attempts = [Attempt(*row) for row in claimed]
        if attempts:
            outcomes = await asyncio.gather(*(self._send(attempt) for attempt in attempts))
            async with self._engine.begin() as conn:
                for attempt, outcome in zip(attempts, outcomes, strict=True):
                    await conn.execute(self._record(attempt, outcome))
        return len(attempts)

    async def _send(self, attempt: Attempt) -> Outcome:
        body = attempt.body.encode()
        keys = [attempt.secret] + ([attempt.previous_secret] if attempt.previous_secret else [])
        headers = signing.headers(keys, attempt.id, int(time.time()), body)
        answer = b""
        try:
            # The whole attempt, not each read, is bounded: a receiver that drips its answer byte
            # by byte must not outlive the lease.
            async with asyncio.timeout(self._timeout_s):
                async with self._client.stream("POST", attempt.url, content=body, headers=headers) as response:
                    async for chunk in response.aiter_bytes():
                        answer += chunk
                        if len(answer) >= RESPONSE_LIMIT:
                            break
        except TimeoutError:
            return Outcome(False, None, f"no answer within {self._timeout_s} s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            # Whatever the receiver (or its URL) does, the attempt has an outcome to record.
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= response.status_code < 300:
            return Outcome(True, response.status_code, None)
        excerpt = answer[:200].decode("utf-8", "replace")
        return Outcome(False, response.status_code, f"HTTP {response.status_code}: {excerpt}")

    def _record(self, attempt: Attempt, outcome: Outcome) -> Update:
        mine = webhook_deliveries.c.id == attempt.id
        # Only the attempt this worker made: a lease that ran out was someone else's since.
        statement = update(webhook_deliveries).where(mine, webhook_deliveries.c.attempts == attempt.attempt)
        values: dict[str, object] = {"last_status_code": outcome.status_code, "last_error": outcome.error}
        if outcome.delivered:
            self._metrics.webhook_attempts.labels("delivered").inc()
            values.update(status="delivered", delivered_at=func.clock_timestamp())
        elif attempt.attempt > len(self._retry_s):
            self._metrics.webhook_attempts.labels("gave_up").inc()
            log.warning("webhook delivery %s given up after %d attempts", attempt.id, attempt.attempt)
            values.update(status="failed")
        else:
            self._metrics.webhook_attempts.labels("failed").inc()
            pause = self._retry_s[attempt.attempt - 1]
            values.update(next_attempt_at=func.clock_timestamp() + func.make_interval(0, 0, 0, 0, 0, 0, pause))
        return statement.values(**values)

    async def aclose(self) -> None:
        await self._client.aclose()
