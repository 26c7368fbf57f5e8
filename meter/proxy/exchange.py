"""What the stages of the request path share: the Exchange (one tenant request as it travels,
filled in stage by stage) and the Hold (the limit reservation it carries until it is settled)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from meter.db.rows import Settlement
from meter.proxy.auth import Caller
from meter.proxy.estimate import RequestShape
from meter.usage import Usage

_ZERO = Decimal(0)


@dataclass(slots=True)
class Hold:
    """What a request holds: its own reservation, or a share of its process's lease (`lease`), and
    the UTC day and month its usage counts in."""

    id: str
    request_id: str
    subjects: tuple[str, ...]
    day: str
    month: str
    lease: bool = False
    # Gives the unused part of the request's bound back to the lease (proxy/leases.py); near a
    # limit's end, also to Postgres (the task it returns).
    finish: Callable[[int, Decimal], asyncio.Task[None] | None] | None = None

    def settlement(self, tokens: int, usd: Decimal | None) -> Settlement:
        """The settlement a ledger row of this much usage carries (the request's last, or the one
        spooled at its start in case meter dies)."""
        return Settlement(
            hold=self.id,
            request_id=self.request_id,
            subjects=list(self.subjects),
            day=self.day,
            month=self.month,
            tokens=tokens,
            usd=usd or _ZERO,
            lease=self.lease,
        )

    def end(self, tokens: int, usd: Decimal | None) -> asyncio.Task[None] | None:
        """The request is over, having used this much: a lease has the rest of its bound back (and
        Postgres too, by the task returned, near a limit's end)."""
        return self.finish(tokens, usd or _ZERO) if self.finish is not None else None


@dataclass(frozen=True)
class Reservation:
    """A worst case an endpoint worked out itself (a batch: all its requests), and how it is held:
    without a concurrency slot, owned by no process, for `ttl_s` (the batch's lifetime)."""

    tokens: int
    usd: Decimal
    ttl_s: float
    owner: str
    slot: bool = False


@dataclass
class Exchange:
    request_id: str
    caller: Caller
    # The endpoint's name (the ledger's `endpoint`) and whether it generates tokens that are priced.
    endpoint: str
    billed: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    # Read from the request body.
    model: str | None = None
    stream: bool = False
    max_tokens: int = 0
    # What the reservation and the pricing read of a billed request's body.
    shape: RequestShape | None = None
    # Read from the answer.
    response_model: str | None = None
    status: int = 0
    error_type: str | None = None
    usage: Usage = field(default_factory=Usage)
    partial: bool = False
    stop_reason: str | None = None
    upstream_request_id: str | None = None
    ttfb_s: float | None = None
    # Set by a handler that works out its own worst case (else the limits stage does, from `shape`).
    reservation: Reservation | None = None
    # Set by the limits stage: the reservation to settle, and the rate-limit header lines to return
    # (limits.head_lines), which go into the head as they are where the server takes them
    # (`add_head_lines`, server.HEAD_LINES).
    hold: Hold | None = None
    ratelimit_lines: bytes = b""
    add_head_lines: Callable[[bytes], None] | None = None
    # The hold's rest on its way back to Postgres (Hold.end), awaited before the answer completes.
    giving_back: asyncio.Task[None] | None = None
    # What went wrong upstream, if anything did: counted in meter_upstream_errors_total.
    upstream_error: str | None = None
    # The usage a request is billed at if it never learns its own (recorder.py): set when forwarded.
    estimate: Usage | None = None
    # Cancelled by the server (a shutdown past its grace period): billed for what it saw, partial.
    cancelled: bool = False

    def first_byte(self) -> None:
        if self.ttfb_s is None:
            self.ttfb_s = time.perf_counter() - self.started
