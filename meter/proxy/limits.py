"""Stage 2 of the request path: limits, budgets and prepaid credit.

Before forwarding, a request of a limited tenant or key takes its worst case (estimate.py) from
its process's lease of the tenant's and key's headroom (leases.py): no round trip while the lease
covers it, one call of meter_lease when it must be refilled, atomic across every meter process
sharing the database. A handler that works out its own reservation (a batch, held for hours)
reserves it with one call of meter_reserve instead. Either way the ledger writer settles the exact
usage in the same transaction as the request's ledger row. Holds and leases carry an expiry that
their process renews while it lives: a killed process's lapse and give their headroom back.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter.db.engine import once_more_if_disconnected
from meter.db.notices import KEYS_CHANNEL, RECLAIM_CHANNEL
from meter.errors import InvalidRequest, MeterError, Overloaded, RateLimited
from meter.metrics import Metrics
from meter.money import decimal_text
from meter.periods import month_start
from meter.pricing import PriceTable
from meter.proxy import estimate
from meter.proxy.auth import Caller
from meter.proxy.estimate import RequestShape
from meter.proxy.exchange import Exchange, Hold
from meter.proxy.leases import Lease, LeaseBook, Need, Refused

log = logging.getLogger("meter.limits")

_RESERVE = text("SELECT meter_reserve(:hold, :owner, :subjects, :tokens, :usd, :ttl, :slot)")
_RENEW_HOLDS = text(
    "UPDATE holds SET expires_at = clock_timestamp() + make_interval(secs => :ttl) WHERE owner = :owner RETURNING id"
)
_EXPIRE = text("SELECT meter_expire_holds()")
# How often idle and retired leases give their headroom back.
LEASE_TIDY_S = 0.5

# The SDKs honour retry-after only up to a minute; past that, tell them not to retry at all.
SDK_RETRY_WINDOW_S = 60
PERIOD_WORDS = {
    "tokens_per_day": ("daily token limit", "tokens"),
    "tokens_per_month": ("monthly token limit", "tokens"),
    "budget_usd_per_day": ("daily budget", "usd"),
    "budget_usd_per_month": ("monthly budget", "usd"),
}


class Limiter:
    def __init__(
        self,
        engine: AsyncEngine,
        hot_engine: AsyncEngine,
        prices: PriceTable,
        metrics: Metrics,
        hold_ttl_s: float,
        image_tokens: int = estimate.IMAGE_TOKENS,
        server_tool_uses: int = estimate.SERVER_TOOL_USES,
        tool_result_tokens: int | None = None,
    ) -> None:
        self._image_tokens = image_tokens
        self._tool_uses = server_tool_uses
        self._tool_result_tokens = tool_result_tokens
        self._engine = engine
        self._hot_engine = hot_engine
        self._prices = prices
        self._metrics = metrics
        self._ttl_s = hold_ttl_s
        # Identifies this process's holds and leases, renewed while it lives.
        self.owner = "proc_" + secrets.token_hex(6)
        self.leases = LeaseBook(engine, metrics, self.owner, hold_ttl_s)
        self._period: tuple[date | None, tuple[str, str]] = (None, ("", ""))

    async def reserve(self, exchange: Exchange) -> None:
        """Reserve the worst case for `exchange`, or raise the error the tenant should see."""
        caller = exchange.caller
        subjects = caller.limit_subjects
        if not subjects:
            return
        tokens, usd = self._worst_case(exchange)
        if exchange.reservation is not None:
            await self._reserve_alone(exchange, tokens, usd)
            return
        need = Need(tokens, usd, slots=1)
        try:
            taken = self.leases.take(subjects, need) or await self.leases.refill_and_take(subjects, need)
        except Refused as refused:
            self._metrics.limit_rejections.labels(refused.refusal["reason"]).inc()
            raise refusal_error(refused.refusal) from None
        except (DBAPIError, OSError) as exc:
            raise Overloaded("meter cannot check limits right now; try again shortly.") from exc
        lease, finish = taken
        day, month = self._period_of(exchange.started_at.date())
        exchange.hold = Hold(lease.id, exchange.request_id, subjects, day, month, True, finish)
        exchange.ratelimit_lines = self._ratelimit_lines(lease)

    async def _reserve_alone(self, exchange: Exchange, tokens: int, usd: Decimal) -> None:
        """A reservation of its own, held in Postgres with one call of meter_reserve."""
        caller = exchange.caller
        hold_id = "hold_" + exchange.request_id
        own = exchange.reservation
        arguments = {
            "hold": hold_id,
            "owner": own.owner if own else self.owner,
            "subjects": list(caller.limit_subjects),
            "tokens": tokens,
            "usd": usd,
            "ttl": own.ttl_s if own else self._ttl_s,
            "slot": own.slot if own else True,
        }

        async def run(conn: AsyncConnection) -> Any:
            return (await conn.execute(_RESERVE, arguments)).scalar_one()

        self._metrics.db_round_trips.labels("reserve").inc()
        try:
            answer = await once_more_if_disconnected(self._hot_engine, run)
        except (DBAPIError, OSError) as exc:
            # Limits cannot be checked: refuse rather than let a budget be overrun.
            raise Overloaded("meter cannot check limits right now; try again shortly.") from exc
        if isinstance(answer, str):
            answer = json.loads(answer, parse_float=Decimal)
        if not answer["ok"]:
            refusal = answer["refusal"]
            self._metrics.limit_rejections.labels(refusal["reason"]).inc()
            raise refusal_error(refusal)
        exchange.hold = Hold(hold_id, exchange.request_id, caller.limit_subjects, answer["day"], answer["month"])
        exchange.ratelimit_lines = ratelimit_lines(answer)

    def _period_of(self, day: date) -> tuple[str, str]:
        """The UTC day and month of a request as settlements carry them (the same all day long)."""
        if self._period[0] != day:
            self._period = (day, (day.isoformat(), month_start(day).isoformat()))
        return self._period[1]

    def _ratelimit_lines(self, lease: Lease) -> bytes:
        """A limited answer's rate-limit header lines: the limits and resets are the lease grant's
        (made into a template once per grant); what remains is the rest beyond the lease when it was
        granted plus what the lease has unused now (other processes' use since then is not seen)."""
        if lease.header_lines is None:
            fixed, remaining = {}, []
            for family, name in (("request_header", "requests"), ("token_header", "tokens")):
                base = lease.headers.get(family)
                if base:
                    lines = _family_headers(name, base["limit"], 0, base["reset"])
                    lines[f"anthropic-ratelimit-{name}-remaining"] = "%d"
                    fixed.update(lines)
                    remaining.append((family == "request_header", float(base["remaining"])))
            lease.header_lines = (head_lines(fixed), remaining)
        template, remaining = lease.header_lines
        left = []
        for requests, beyond in remaining:
            own = lease.requests if requests else lease.tokens
            rest = beyond + own if own > 0 else beyond  # a lease overdrawn by a request counts as empty
            left.append(int(rest) if rest > 0 else 0)
        return template % tuple(left)

    def _worst_case(self, exchange: Exchange) -> tuple[int, Decimal]:
        if exchange.reservation is not None:
            return exchange.reservation.tokens, exchange.reservation.usd
        if not exchange.billed or exchange.shape is None or exchange.model is None:
            return 0, Decimal(0)  # count_tokens and models are free: they count against request limits only
        caller, model, shape = exchange.caller, exchange.model, exchange.shape
        bound = self.worst_case(caller, model, shape, exchange.max_tokens, exchange.started_at)
        return bound.tokens, bound.usd

    def worst_case(
        self, caller: Caller, model: str, shape: RequestShape, max_tokens: int, when: datetime | None = None
    ) -> estimate.WorstCase:
        """The most a call of `model` shaped so can cost (proxy/estimate.py), at the price of `when`
        (the request's start; default now); a model without a price is refused for a caller whose
        limits are in USD."""
        price = self._prices.price_at(model, when or datetime.now(UTC))
        if price is None and caller.needs_price:
            raise InvalidRequest(
                f"model: {model!r} has no price in meter, so it cannot be used with a budget or "
                "prepaid credit. Ask your provider to add a price for it."
            )
        return estimate.worst_case(
            price, shape, max_tokens, self._image_tokens, self._tool_uses, self._tool_result_tokens
        )

    async def housekeeping(self) -> None:
        """Renew this process's holds, release holds whose process died, give back what idle leases
        hold; runs until cancelled."""
        renew_every = min(5.0, self._ttl_s / 3)
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(min(renew_every, LEASE_TIDY_S))
            await self.leases.tidy()
            if time.monotonic() - renewed < renew_every:
                continue
            renewed = time.monotonic()
            try:
                async with self._engine.begin() as conn:
                    held = (await conn.execute(_RENEW_HOLDS, {"ttl": self._ttl_s, "owner": self.owner})).scalars()
                    self.leases.renewed(set(held), renewed)
                async with self._engine.begin() as conn:
                    released = (await conn.execute(_EXPIRE)).scalar_one()
                if released:
                    log.warning("released %d expired holds of stopped processes", released)
            except (DBAPIError, OSError):
                log.warning("hold housekeeping failed; retrying", exc_info=True)

    def followers(self) -> dict[str, Callable[[str], None]]:
        """What the leases follow of the database's notices (auth.KeyCache.listen delivers them):
        any change to keys, tenants, limits or credit retires every lease, so the new settings hold at
        once; a reclaim asks for the headroom of some subjects back."""
        return {KEYS_CHANNEL: lambda _payload: self.leases.retire(), RECLAIM_CHANNEL: self.leases.on_reclaim}


def refusal_error(refusal: dict[str, Any]) -> MeterError:
    reason = refusal["reason"]
    whose = "API key" if str(refusal["subject"]).startswith("key_") else "organization"
    if reason == "credit":
        remaining, needed = decimal_text(refusal["remaining"]), decimal_text(refusal["needed"])
        return InvalidRequest(
            "Your credit balance is too low to access the Anthropic API: "
            f"${remaining} remains and this request may cost up to ${needed}. "
            "Please ask your provider to add credit."
        )
    retry_after = max(1, math.ceil(float(refusal.get("retry_after", 1))))
    headers = {"retry-after": str(retry_after)}
    if retry_after > SDK_RETRY_WINDOW_S:
        headers["x-should-retry"] = "false"
    limit, remaining, needed = refusal["limit"], refusal["remaining"], refusal["needed"]
    if reason == "max_concurrent_requests":
        message = f"This {whose} already has {limit} requests in flight, its concurrency limit."
    elif reason in ("requests_per_minute", "tokens_per_minute"):
        family = "requests" if reason == "requests_per_minute" else "tokens"
        headers.update(_family_headers(family, limit, remaining, refusal["reset"]))
        message = (
            f"This request would exceed the rate limit of your {whose} of {limit} {family} per minute "
            f"({math.floor(float(remaining))} available, {needed} needed). Please retry after {retry_after} s."
        )
        if family == "tokens" and int(needed) > int(limit):
            headers["x-should-retry"] = "false"
            message = f"This request may use {needed} tokens, more than the per-minute limit of {limit}."
    else:
        words, unit = PERIOD_WORDS[reason]
        if unit == "tokens":
            headers.update(_family_headers("tokens", limit, remaining, refusal["reset"]))
            amounts = f"{remaining} tokens remain and this request may use up to {needed}"
        else:
            amounts = f"${decimal_text(remaining)} remains and this request may cost up to ${decimal_text(needed)}"
        message = f"This request would exceed the {words} of your {whose}: {amounts}."
        if Decimal(str(needed)) > Decimal(str(limit)):
            # It cannot fit even in a fresh period: waiting for the reset would not help.
            headers["x-should-retry"] = "false"
            message += f" That is more than the whole {words}, so it cannot succeed as it is."
    return RateLimited(message, headers)


def ratelimit_lines(answer: dict[str, Any]) -> bytes:
    """The rate-limit header lines of an answer of meter_reserve."""
    headers: dict[str, str] = {}
    for family in ("requests", "tokens"):
        tightest = answer.get(family)
        if tightest:
            headers.update(_family_headers(family, tightest["limit"], tightest["remaining"], tightest["reset"]))
    return head_lines(headers)


def head_lines(headers: dict[str, str]) -> bytes:
    """Header lines as a response head has them (server.HEAD_LINES). The limits stage's values are
    numbers and RFC 3339 times it formats itself (or a %d it fills in)."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()


def _family_headers(family: str, limit: Any, remaining: Any, reset: str) -> dict[str, str]:
    prefix = f"anthropic-ratelimit-{family}"
    return {
        f"{prefix}-limit": str(int(limit)),
        f"{prefix}-remaining": str(max(0, math.floor(float(remaining)))),
        f"{prefix}-reset": _rfc3339(reset),
    }


# A lease's answers share its reset moments: each is formatted once.
@functools.lru_cache(maxsize=1024)
def _rfc3339(value: str) -> str:
    moment = datetime.fromisoformat(value).astimezone(UTC)
    # Rounded up to the second: a client that waits until then finds the headroom there.
    whole = moment.replace(microsecond=0) + (timedelta(seconds=1) if moment.microsecond else timedelta())
    return whole.strftime("%Y-%m-%dT%H:%M:%SZ")
