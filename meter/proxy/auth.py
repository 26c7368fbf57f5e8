"""Stage 1 of the request path: who is calling. Tenant keys are looked up by hash and cached per
process. Every admin change to keys, tenants or limits is announced with Postgres NOTIFY; each
process LISTENs and drops what changed at once. The cache also expires entries after `ttl_s` as a
safety net, and after one second while the listening connection is down.

Unknown keys are remembered apart from known ones, in a smaller cache, so a flood of made-up keys
can neither evict real ones nor reach Postgres more than once each; and an address that keeps
failing is refused (429) for a while before its keys are even looked up, unless the key is one this
process already knows.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.credentials import KeyHasher, legacy_hash
from meter.db.engine import libpq_url, once_more_if_disconnected
from meter.db.notices import EVERY_KEY, KEYS_CHANNEL
from meter.db.queries import key_by_hash, rehash_key
from meter.errors import AuthenticationFailed, Overloaded, PermissionDenied, RateLimited
from meter.metrics import Metrics

MAX_CACHED_KEYS = 100_000
MAX_CACHED_MISSES = 10_000
STALE_IF_ERROR_S = 300.0
# Cache lifetime while notifications cannot be received.
UNLISTENED_TTL_S = 1.0
# Addresses whose failures are counted at once; the oldest is forgotten past this.
MAX_TRACKED_ADDRESSES = 10_000


@dataclass(frozen=True)
class Caller:
    key_id: str
    tenant_id: str
    allowed_models: frozenset[str] | None
    # The tenant and/or key ids that have limits or credit (the limits stage reserves against them),
    # and whether any of them is in USD, which needs the model's price.
    limit_subjects: tuple[str, ...] = ()
    needs_price: bool = False


@dataclass(frozen=True)
class _KeyRecord:
    caller: Caller
    active: bool
    tenant_active: bool
    expires_at: datetime | None


def credential(headers: dict[bytes, bytes]) -> str | None:
    """The tenant key from `x-api-key`, else from `Authorization: Bearer`."""
    key = headers.get(b"x-api-key")
    if key:
        return key.decode("latin-1").strip()
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].decode("latin-1").strip() or None
    return None


class KeyCache:
    def __init__(
        self,
        engine: AsyncEngine,
        metrics: Metrics,
        hasher: KeyHasher,
        ttl_s: float = 10.0,
        failures_per_minute: int = 30,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._hasher = hasher
        self._listening_ttl_s = ttl_s
        self._ttl_s = UNLISTENED_TTL_S
        # key hash -> (when read, what was read), oldest first; misses apart. `_stale` marks entries to
        # re-read, which are kept to serve while Postgres cannot answer.
        self._entries: OrderedDict[str, tuple[float, _KeyRecord]] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()
        self._stale: set[str] = set()
        # Keys that may have been withdrawn (revoked, rotated, tenant suspended): re-read, never
        # served from cache while Postgres is away.
        self._withdrawn: set[str] = set()
        # Counts every change announced; a lookup that saw it move must not cache what it read.
        self._changes = 0
        # Concurrent first requests with one key share one query.
        self._loading: dict[str, asyncio.Future[_KeyRecord | None]] = {}
        self._failures = FailureThrottle(failures_per_minute)

    async def authenticate(self, headers: dict[bytes, bytes], address: str = "") -> Caller:
        try:
            return await self._authenticate(headers, address)
        except (AuthenticationFailed, PermissionDenied, RateLimited) as refusal:
            self._metrics.auth_failures.labels(refusal.error_type).inc()
            if not isinstance(refusal, RateLimited):
                self._failures.failed(address)
            raise

    async def _authenticate(self, headers: dict[bytes, bytes], address: str) -> Caller:
        secret = credential(headers)
        if not secret:
            raise AuthenticationFailed("x-api-key header is required")
        key_hash = self._hasher.hash(secret)
        if key_hash not in self._entries and (wait := self._failures.refusing(address)):
            raise RateLimited(
                "Too many failed authentications from this address; try again later.", {"retry-after": str(wait)}
            )
        record = await self._lookup(key_hash, secret)
        if record is None or not record.active:
            raise AuthenticationFailed("invalid x-api-key")
        if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            raise AuthenticationFailed("this API key has expired")
        if not record.tenant_active:
            raise PermissionDenied("This organization has been disabled.")
        return record.caller

    def forget(self) -> None:
        """Make the next request with any key read Postgres again."""
        self._changes += 1
        self._stale.update(self._entries)
        self._misses.clear()

    def withdraw(self, key_hash: str) -> None:
        """This key may have stopped working: re-read it, and do not serve it stale meanwhile."""
        self._changes += 1
        if key_hash in self._entries or key_hash in self._loading:
            self._stale.add(key_hash)
            self._withdrawn.add(key_hash)

    async def _lookup(self, key_hash: str, secret: str) -> _KeyRecord | None:
        now = time.monotonic()
        cached = self._entries.get(key_hash)
        if cached is not None and now - cached[0] < self._ttl_s and key_hash not in self._stale:
            return cached[1]
        missed = self._misses.get(key_hash)
        if missed is not None and now - missed < self._ttl_s:
            return None
        loading = self._loading.get(key_hash)
        if loading is not None:
            await asyncio.wait([loading])
            if not loading.cancelled():
                return loading.result()
            # The query it waited for failed: run its own, which raises the error here too.
        future: asyncio.Future[_KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._loading[key_hash] = future
        changes = self._changes
        try:
            record = await self._read(key_hash, legacy_hash(secret))
        except (DBAPIError, OSError) as exc:
            future.cancel()
            # Postgres briefly away: keep serving keys seen recently rather than refuse everyone,
            # but never one an admin change marked for re-reading (it may have been revoked).
            if cached is not None and key_hash not in self._withdrawn and now - cached[0] < STALE_IF_ERROR_S:
                return cached[1]
            raise Overloaded("meter's database is unavailable; try again shortly.") from exc
        except BaseException:
            future.cancel()
            raise
        finally:
            self._loading.pop(key_hash, None)
        future.set_result(record)
        self._remember(key_hash, now, record, fresh=changes == self._changes)
        return record

    async def _read(self, key_hash: str, legacy: str) -> _KeyRecord | None:
        self._metrics.db_round_trips.labels("key_lookup").inc()
        row = await once_more_if_disconnected(self._engine, lambda conn: key_by_hash(conn, (key_hash, legacy)))
        if row is not None and legacy in (row["key_hash"], row["previous_key_hash"]):
            # Issued before the pepper: store its peppered hash from now on.
            await once_more_if_disconnected(self._engine, lambda conn: rehash_key(conn, row["id"], legacy, key_hash))
            for column in ("key_hash", "previous_key_hash"):
                if row[column] == legacy:
                    row[column] = key_hash
        return _record(row, key_hash)

    def _remember(self, key_hash: str, now: float, record: _KeyRecord | None, fresh: bool) -> None:
        """Cache what a lookup read; if a change was announced meanwhile, it may predate the change,
        so it is kept only to be re-read (and a withdrawn key stays withdrawn)."""
        if record is None:
            _put(self._misses, key_hash, now, MAX_CACHED_MISSES)
            return
        _put(self._entries, key_hash, (now, record), MAX_CACHED_KEYS)
        if fresh:
            self._stale.discard(key_hash)
            self._withdrawn.discard(key_hash)
        else:
            self._stale.add(key_hash)

    async def listen(self, database_url: str, followers: Mapping[str, Callable[[str], None]] | None = None) -> None:
        """Follow key changes announced on KEYS_CHANNEL; reconnect on loss. Runs until cancelled.
        `followers` hear the payloads of their channels (KEYS_CHANNEL's too, and "*" on reconnect)."""
        followers = dict(followers or {})
        while True:
            try:
                connection = await asyncpg.connect(libpq_url(database_url))
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(1.0)
                continue
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _, lost=lost: lost.set())
            try:
                await connection.add_listener(KEYS_CHANNEL, self._on_notice)
                for channel, follow in followers.items():
                    await connection.add_listener(channel, lambda _c, _p, _ch, payload, f=follow: f(payload))
                # Anything may have changed while not listening.
                self.forget()
                if KEYS_CHANNEL in followers:
                    followers[KEYS_CHANNEL](EVERY_KEY)
                self._ttl_s = self._listening_ttl_s
                await lost.wait()
            except (OSError, asyncpg.PostgresError):
                pass
            finally:
                self._ttl_s = UNLISTENED_TTL_S
                if not connection.is_closed():
                    connection.terminate()
            await asyncio.sleep(0.5)

    def _on_notice(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == EVERY_KEY:
            self.forget()
        else:
            self.withdraw(payload)


def _put(cache: OrderedDict[str, Any], key: str, value: Any, bound: int) -> None:
    """Insert as newest; past `bound` entries the oldest goes."""
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > bound:
        cache.popitem(last=False)


class FailureThrottle:
    """Failed authentications per client address, as a token bucket: `per_minute` failures at once,
    then one more per 60/per_minute seconds. Per process."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (level, when)

    def _level(self, address: str, now: float) -> float:
        level, when = self._buckets.get(address, (float(self._per_minute), now))
        return min(float(self._per_minute), level + (now - when) * self._per_minute / 60.0)

    def refusing(self, address: str) -> int:
        """0 if `address` may try; else the seconds until it may."""
        if not self._per_minute or address not in self._buckets:
            return 0
        level = self._level(address, time.monotonic())
        return 0 if level >= 1 else max(1, round((1 - level) * 60.0 / self._per_minute))

    def failed(self, address: str) -> None:
        if not self._per_minute:
            return
        now = time.monotonic()
        _put(self._buckets, address, (self._level(address, now) - 1, now), MAX_TRACKED_ADDRESSES)


def _record(row: dict[str, Any] | None, key_hash: str) -> _KeyRecord | None:
    if row is None:
        return None
    expires_at = row["expires_at"]
    if row["key_hash"] != key_hash:
        # The previous secret of a rotated key: valid until its grace period ends.
        grace = row["previous_valid_until"]
        if grace is None:
            return None
        expires_at = grace if expires_at is None else min(expires_at, grace)
    allowed = row["allowed_models"]
    return _KeyRecord(
        caller=Caller(
            key_id=row["id"],
            tenant_id=row["tenant_id"],
            allowed_models=frozenset(allowed) if allowed else None,
            limit_subjects=tuple(
                subject
                for subject, limited in ((row["tenant_id"], row["tenant_limited"]), (row["id"], row["key_limited"]))
                if limited
            ),
            needs_price=bool(row["needs_price"]),
        ),
        active=row["status"] == "active",
        tenant_active=row["tenant_status"] == "active",
        expires_at=expires_at,
    )
