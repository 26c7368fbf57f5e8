"""Stage 1 of the request path: who is calling. Tenant keys are looked up by hash and cached per
process. Every admin change to keys, tenants or limits is announced with Postgres NOTIFY; each
process LISTENs and drops what changed at once. The cache also expires entries after `ttl_s` as a
safety net, and after one second while the listening connection is down."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.credentials import hash_key
from meter.db.engine import libpq_url, once_more_if_disconnected
from meter.db.notices import EVERY_KEY, KEYS_CHANNEL
from meter.db.queries import key_by_hash
from meter.errors import AuthenticationFailed, Overloaded, PermissionDenied
from meter.metrics import Metrics

MAX_CACHED_KEYS = 100_000
STALE_IF_ERROR_S = 300.0
# Cache lifetime while notifications cannot be received.
UNLISTENED_TTL_S = 1.0


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
    def __init__(self, engine: AsyncEngine, metrics: Metrics, ttl_s: float = 10.0) -> None:
        self._engine = engine
        self._metrics = metrics
        self._listening_ttl_s = ttl_s
        self._ttl_s = UNLISTENED_TTL_S
        # key hash -> (when read, what was read); `_stale` marks entries to re-read, which are kept
        # to serve while Postgres cannot answer.
        self._entries: dict[str, tuple[float, _KeyRecord | None]] = {}
        self._stale: set[str] = set()
        # Keys that may have been withdrawn (revoked, rotated, tenant suspended): re-read, never
        # served from cache while Postgres is away.
        self._withdrawn: set[str] = set()
        # Concurrent first requests with one key share one query.
        self._loading: dict[str, asyncio.Future[_KeyRecord | None]] = {}

    async def authenticate(self, headers: dict[bytes, bytes]) -> Caller:
        secret = credential(headers)
        if not secret:
            raise AuthenticationFailed("x-api-key header is required")
        record = await self._lookup(hash_key(secret))
        if record is None or not record.active:
            raise AuthenticationFailed("invalid x-api-key")
        if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            raise AuthenticationFailed("this API key has expired")
        if not record.tenant_active:
            raise PermissionDenied("This organization has been disabled.")
        return record.caller

    def forget(self) -> None:
        """Make the next request with any key read Postgres again."""
        self._stale.update(self._entries)

    def withdraw(self, key_hash: str) -> None:
        """This key may have stopped working: re-read it, and do not serve it stale meanwhile."""
        if key_hash in self._entries:
            self._stale.add(key_hash)
            self._withdrawn.add(key_hash)

    async def _lookup(self, key_hash: str) -> _KeyRecord | None:
        cached = self._entries.get(key_hash)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._ttl_s and key_hash not in self._stale:
            return cached[1]
        loading = self._loading.get(key_hash)
        if loading is not None:
            await asyncio.wait([loading])
            if not loading.cancelled():
                return loading.result()
            # The query it waited for failed: run its own, which raises the error here too.
        future: asyncio.Future[_KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._loading[key_hash] = future
        try:
            self._metrics.db_round_trips.labels("key_lookup").inc()
            row = await once_more_if_disconnected(self._engine, lambda conn: key_by_hash(conn, key_hash))
            record = _record(row, key_hash)
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
        if len(self._entries) >= MAX_CACHED_KEYS:
            self._entries.clear()
            self._stale.clear()
            self._withdrawn.clear()
        self._entries[key_hash] = (now, record)
        self._stale.discard(key_hash)
        self._withdrawn.discard(key_hash)
        return record

    async def listen(self, database_url: str) -> None:
        """Follow key changes announced on KEYS_CHANNEL; reconnect on loss. Runs until cancelled."""
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
                # Anything may have changed while not listening.
                self.forget()
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
