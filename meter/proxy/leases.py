"""Headroom leases: how a limited request is admitted without a round trip to Postgres.

A process takes a slice of a subject set's headroom (tokens, USD, requests per minute, concurrency
slots) with one call of meter_lease (migration 0007) and spends it locally, request by request.
What a lease holds counts in Postgres as held, exactly like one request's reservation, so for every
limited subject, always:

    settled usage + everything held (leases and reservations) <= limit

A finished request gives its unused worst case back to the lease; its ledger row's settlement moves
what it used from the lease to the settled counters (meter_settle). A lease is refilled in the
background before it runs out, and returns its unused part when idle, on shutdown, when the
operator changes anything (NOTIFY), and when another process is refused while leases hold headroom
(`reclaim`). Each slice is at most a `share` of what is left, so slices shrink as the headroom runs
low; once a request is refused (or another process reclaims), the subjects are leased request by
request for a few seconds, every request's rest going straight back, so the last of a budget is
granted exactly: never overspent, never stranded in a lease. A lease is a hold owned by its
process: it lapses `hold_ttl_s` after the process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.notices import RECLAIM_CHANNEL, reclaim_payload
from meter.metrics import Metrics

log = logging.getLogger("meter.leases")

_LEASE = text(
    "SELECT meter_lease(:lease, :owner, :subjects, :need_tokens, :need_usd, :need_requests, :need_slots,"
    " :have_tokens, :have_usd, :have_requests, :have_slots, :want_tokens, :want_usd, :want_requests,"
    " :want_slots, :share, :ttl)"
)
_RETURN = text("SELECT meter_lease_return(:lease, :subjects, :tokens, :usd, :requests, :slots)")
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")

# A slice is at most this share of what a subject has left beyond the request at hand.
SHARE = Decimal("0.25")
# A slice covers this many requests like the last one, doubling while refills come within a second
# (up to MAX_MULTIPLE: about one refill a second for a tenant's 4,000 requests a second to a process).
FIRST_MULTIPLE, MAX_MULTIPLE = 8, 4096
SLOTS_PER_SLICE = 8
# A lease unused this long gives its headroom back.
IDLE_S = 2.0
# Refill in the background once any dimension falls below this share of what was last granted.
REFILL_BELOW = 0.25
# What a request calls when it ends, with what it used: a lease in exact mode returns the task
# giving the rest back to Postgres.
Finish = Callable[[int, Decimal], "asyncio.Task[None] | None"]
_REFILL_BELOW_USD = Decimal(REFILL_BELOW)
# How long a refused request waits for other processes to give back what their leases hold unused
# (a NOTIFY and one statement each: milliseconds), polling so often; past it, the refusal stands.
RECLAIM_WAIT_S = 0.15
RECLAIM_POLL_S = 0.015
RECLAIM_EVERY_S = 1.0
# After a refusal (or a reclaim) a subject set is leased request by request for this long.
EXACT_S = 5.0


@dataclass(slots=True)
class Need:
    """What one request takes from a lease while it runs."""

    tokens: int
    usd: Decimal
    slots: int  # 1, or 0 for a call that holds no concurrency slot
    requests: float = 1.0


class Refused(Exception):
    def __init__(self, refusal: dict[str, Any]) -> None:
        super().__init__(refusal.get("reason"))
        self.refusal = refusal


class Lease:
    """One process's slice of the headroom of one set of subjects (a tenant and its key)."""

    def __init__(self, lease_id: str, subjects: tuple[str, ...]) -> None:
        self.id = lease_id
        self.subjects = subjects
        # Unused: what requests may still take. Negative only if a request used more than its bound.
        self.tokens = 0
        self.usd = Decimal(0)
        self.requests = 0.0
        self.slots = 0
        self.running = 0
        # Below any of these (REFILL_BELOW of what was last granted) the lease is refilled.
        self.refill_below: tuple[float, Decimal, float, float] = (0.0, Decimal(0), 0.0, 0.0)
        self.multiple = FIRST_MULTIPLE
        self.refilled_at = 0.0
        self.used_at = time.monotonic()
        self.retired = False
        # Until when its hold surely lasts (monotonic): granted or renewed this long ago, plus the TTL.
        self.valid_until = 0.0
        self.lock = asyncio.Lock()
        # The rate-limit headers' limits, remaining and resets when granted (meter_lease's answer),
        # and the limits stage's template of header lines made of them, once per grant.
        self.headers: dict[str, Any] = {}
        self.header_lines: tuple[bytes, list[tuple[bool, float]]] | None = None

    def covers(self, need: Need) -> bool:
        return (self.tokens >= need.tokens and self.usd >= need.usd and self.requests >= need.requests
                and self.slots >= need.slots)  # fmt: skip

    def take(self, need: Need, now: float) -> None:
        self.tokens -= need.tokens
        self.usd -= need.usd
        self.requests -= need.requests
        self.slots -= need.slots
        self.running += 1
        self.used_at = now

    def grant(self, granted: Need) -> None:
        self.tokens += granted.tokens
        self.usd += granted.usd
        self.requests += granted.requests
        self.slots += granted.slots
        self.refill_below = (granted.tokens * REFILL_BELOW, granted.usd * _REFILL_BELOW_USD,
                             granted.requests * REFILL_BELOW, granted.slots * REFILL_BELOW)  # fmt: skip

    def finish(self, need: Need, tokens: int, usd: Decimal) -> None:
        """A request is over: what it did not use of its bound is the lease's again (its row's
        settlement takes what it used out of the lease in Postgres)."""
        self.tokens += need.tokens - tokens
        self.usd += need.usd - usd
        self.slots += need.slots
        self.running -= 1

    def low(self) -> bool:
        tokens, usd, requests, slots = self.refill_below
        return self.tokens < tokens or self.usd < usd or self.requests < requests or self.slots < slots

    def unused(self) -> dict[str, Any]:
        return {
            "tokens": max(self.tokens, 0),
            "usd": max(self.usd, Decimal(0)),
            "requests": max(self.requests, 0.0),
            "slots": max(self.slots, 0),
        }


class LeaseBook:
    """This process's leases, one per subject set. `engine` commits synchronously: a lease, unlike one
    request's reservation, holds enough headroom that losing its grant in a Postgres crash matters."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics, owner: str, ttl_s: float) -> None:
        self._engine = engine
        self._metrics = metrics
        self._owner = owner
        self._ttl_s = ttl_s
        # A lease is not spent this close to the end of its hold's life.
        self._margin_s = min(1.0, ttl_s / 4)
        self._leases: dict[tuple[str, ...], Lease] = {}
        # Retired leases whose requests are still running: what those leave unused goes back too.
        self._retired: list[Lease] = []
        self._background: set[asyncio.Task[None]] = set()
        # When this process last asked the others to give back headroom, per subject set.
        self._reclaimed: dict[tuple[str, ...], float] = {}
        # Subject sets whose headroom ran out lately: leased request by request until then.
        self._exact_until: dict[tuple[str, ...], float] = {}

    def take(self, subjects: tuple[str, ...], need: Need) -> tuple[Lease, Finish] | None:
        """Take `need` from the subjects' lease if it covers it, with no round trip: the lease and
        what to call when the request ends. None if the lease must be refilled first (`refill_and_take`)."""
        now = time.monotonic()
        lease = self._usable_lease(subjects, now)
        return self._taken(lease, need, now) if lease.covers(need) else None

    async def refill_and_take(self, subjects: tuple[str, ...], need: Need) -> tuple[Lease, Finish]:
        """`take`, refilling the lease first as far as it cannot cover `need`; Refused if the headroom,
        everywhere, is not there."""
        lease = self._usable_lease(subjects, time.monotonic())
        refused = None
        async with lease.lock:
            if not lease.covers(need):
                try:
                    await self._refill_for(lease, need)
                except Refused as exc:
                    refused = exc
        if refused is not None:
            # Nothing stays in this lease while it refuses: before the refusal is answered, what it
            # holds goes back, so the caller's next request, on any process, can have it.
            await self._quietly(self.give_back(lease))
            raise refused
        return self._taken(lease, need, time.monotonic())

    def _usable_lease(self, subjects: tuple[str, ...], now: float) -> Lease:
        lease = self._leases.get(subjects)
        if lease is not None and lease.valid_until and now > lease.valid_until - self._margin_s:
            # Its hold may lapse (renewals were late, Postgres slow or away): what it still holds may be
            # anyone's soon. Never spend it; a new lease starts from what Postgres says.
            self.retire(set(subjects))
            lease = None
        if lease is None:
            lease = self._leases[subjects] = Lease(f"lease_{self._owner}_{secrets.token_hex(4)}", subjects)
        return lease

    def _taken(self, lease: Lease, need: Need, now: float) -> tuple[Lease, Finish]:
        lease.take(need, now)
        subjects = lease.subjects
        if lease.low() and not lease.lock.locked() and not self._exact(subjects):
            self._spawn(self._refill_ahead(lease, need))

        def finish(tokens: int, usd: Decimal) -> asyncio.Task[None] | None:
            lease.finish(need, tokens, usd)
            if self._exact(subjects):
                # Request by request: what this one did not use goes back at once, before the answer
                # completes (the gateway waits), so the caller's next request finds it in Postgres.
                return self._spawn(self._quietly(self.give_back(lease)))
            return None

        return lease, finish

    def _exact(self, subjects: tuple[str, ...]) -> bool:
        return time.monotonic() < self._exact_until.get(subjects, 0.0)

    def _go_exact(self, subjects: tuple[str, ...]) -> None:
        """The headroom of these subjects is (nearly) gone: for a while, lease nothing beyond the
        request at hand and give back each request's rest, so none is stranded in a lease."""
        self._exact_until[subjects] = time.monotonic() + EXACT_S

    async def _refill_for(self, lease: Lease, need: Need) -> None:
        answer = await self._lease(lease, need)
        if answer["ok"]:
            return
        self._go_exact(lease.subjects)
        now = time.monotonic()
        if not answer.get("reclaim") or now - self._reclaimed.get(lease.subjects, -RECLAIM_EVERY_S) < RECLAIM_EVERY_S:
            raise Refused(answer["refusal"])
        # Other processes hold leases of these subjects: ask them to give back what they do not use,
        # then try again until they have (or the wait is over). At most once a second per subjects,
        # so a tenant hammering an exhausted budget costs one statement per request, as before leases.
        self._reclaimed[lease.subjects] = now
        await self._ask_reclaim(lease.subjects)
        deadline = now + RECLAIM_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(RECLAIM_POLL_S)
            answer = await self._lease(lease, need)
            if answer["ok"]:
                return
        raise Refused(answer["refusal"])

    async def _refill_ahead(self, lease: Lease, like: Need) -> None:
        if lease.lock.locked():
            return
        async with lease.lock:
            if lease.retired or not lease.low():
                return
            with contextlib.suppress(DBAPIError, OSError):
                await self._lease(lease, Need(0, Decimal(0), 0, 0.0), like)

    async def _lease(self, lease: Lease, need: Need, like: Need | None = None) -> dict[str, Any]:
        """One call of meter_lease: the missing part of `need` plus a slice sized on `like`."""
        now = time.monotonic()
        if now - lease.refilled_at < 1.0:
            lease.multiple = min(lease.multiple * 2, MAX_MULTIPLE)
        elif now - lease.refilled_at > 10.0:
            lease.multiple = FIRST_MULTIPLE
        lease.refilled_at = now
        shape = like or need
        # Enough for the requests running now twice over, so a burst needs few refills; nothing
        # beyond the request itself while the headroom is nearly gone.
        m = 0 if self._exact(lease.subjects) else max(lease.multiple, 2 * lease.running)
        arguments = {
            "lease": lease.id,
            "owner": self._owner,
            "subjects": list(lease.subjects),
            "need_tokens": need.tokens,
            "need_usd": need.usd,
            "need_requests": need.requests,
            "need_slots": need.slots,
            "have_tokens": lease.tokens,
            "have_usd": lease.usd,
            "have_requests": lease.requests,
            "have_slots": lease.slots,
            "want_tokens": shape.tokens * m,
            "want_usd": shape.usd * m,
            "want_requests": float(m),
            "want_slots": max(SLOTS_PER_SLICE, lease.running) if shape.slots and m else 0,
            "share": SHARE,
            "ttl": self._ttl_s,
        }

        self._metrics.db_round_trips.labels("lease").inc()
        sent = time.monotonic()
        async with self._engine.begin() as conn:
            answer = (await conn.execute(_LEASE, arguments)).scalar_one()
        if isinstance(answer, str):
            answer = json.loads(answer, parse_float=Decimal)
        if answer["ok"]:
            granted = Need(int(answer["tokens"]), Decimal(str(answer["usd"])), int(answer["slots"]),
                           float(answer["requests"]))  # fmt: skip
            lease.grant(granted)
            lease.valid_until = sent + self._ttl_s
            lease.headers = {k: answer[k] for k in ("request_header", "token_header") if answer.get(k)}
            lease.header_lines = None
        return dict(answer)

    def renewed(self, held: set[str], sent: float) -> None:
        """The holds `held` of this process were renewed by a statement sent at `sent` (monotonic);
        a lease whose hold was not among them (it lapsed meanwhile) is left to run out of time."""
        for lease in [*self._leases.values(), *self._retired]:
            if lease.id in held:
                lease.valid_until = max(lease.valid_until, sent + self._ttl_s)

    async def give_back(self, lease: Lease) -> None:
        """Return what the lease has unused to Postgres."""
        async with lease.lock:
            unused = lease.unused()
            if not any(unused.values()):
                return
            self._metrics.db_round_trips.labels("lease_return").inc()
            async with self._engine.begin() as conn:
                await conn.execute(_RETURN, {"lease": lease.id, "subjects": list(lease.subjects), **unused})
            lease.tokens -= unused["tokens"]
            lease.usd -= unused["usd"]
            lease.requests -= unused["requests"]
            lease.slots -= unused["slots"]

    def retire(self, overlapping: set[str] | None = None) -> None:
        """Stop using the leases of these subjects (all when None) and give back what they hold:
        the operator changed something, or another process needs the headroom."""
        for subjects, lease in list(self._leases.items()):
            if overlapping is None or overlapping.intersection(subjects):
                lease.retired = True
                del self._leases[subjects]
                self._retired.append(lease)
                self._spawn(self._quietly(self.give_back(lease)))

    async def tidy(self) -> None:
        """Give back what idle and retired leases hold; forget those nothing uses any more."""
        now = time.monotonic()
        for lease in [*self._leases.values(), *self._retired]:
            if lease.retired or now - lease.used_at > IDLE_S:
                with contextlib.suppress(DBAPIError, OSError):
                    await self.give_back(lease)
        self._retired = [lease for lease in self._retired if lease.running or any(lease.unused().values())]
        self._reclaimed = {s: at for s, at in self._reclaimed.items() if now - at < RECLAIM_EVERY_S}
        self._exact_until = {s: until for s, until in self._exact_until.items() if until > now}
        for subjects, lease in list(self._leases.items()):
            idle = now - lease.used_at > IDLE_S and not lease.running and not lease.lock.locked()
            if idle and not any(lease.unused().values()):
                del self._leases[subjects]

    async def close(self) -> None:
        """On shutdown: everything unused goes back, so other processes have it at once."""
        for task in list(self._background):
            task.cancel()
        for lease in [*self._leases.values(), *self._retired]:
            with contextlib.suppress(DBAPIError, OSError):
                await self.give_back(lease)

    def on_reclaim(self, payload: str) -> None:
        subjects, owner = _parse_reclaim(payload)
        if owner != self._owner:
            for leased in self._leases:
                if subjects.intersection(leased):
                    self._go_exact(leased)
            self.retire(subjects)

    async def _ask_reclaim(self, subjects: tuple[str, ...]) -> None:
        with contextlib.suppress(DBAPIError, OSError):
            async with self._engine.begin() as conn:
                payload = reclaim_payload(subjects, self._owner)
                await conn.execute(_NOTIFY, {"channel": RECLAIM_CHANNEL, "payload": payload})

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _quietly(self, work: Any) -> None:
        try:
            await work
        except (DBAPIError, OSError):
            log.warning("giving back a lease failed; it lapses with its hold", exc_info=True)


def _parse_reclaim(payload: str) -> tuple[set[str], str]:
    subjects, _, owner = payload.partition("|")
    return set(subjects.split(",")), owner
