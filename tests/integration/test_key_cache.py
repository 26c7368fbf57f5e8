"""The per-process key cache on a real Postgres: what it serves from memory, when it reads again,
what it serves while Postgres cannot answer, and how big it may grow.

No listener runs here, so entries live UNLISTENED_TTL_S (one second): a test that checks an
entry is served from memory does so right after it was read.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.credentials import KeyHasher, generate_key, new_id
from meter.db import migrate
from meter.db.engine import create_engine, create_hot_engine
from meter.db.models import api_keys, limits, tenants
from meter.errors import AuthenticationFailed, Overloaded
from meter.metrics import Metrics
from meter.proxy import auth
from meter.proxy.auth import Caller, KeyCache
from tests.support import KEY_PEPPER, create_database, eventually_async

HASHER = KeyHasher(KEY_PEPPER)


class Keys:
    """A key cache on its own engine, as one meter process has, and the tenant keys it looks up."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.registry = CollectorRegistry()
        self.engine: AsyncEngine = create_hot_engine(url, pool_size=2)
        self.cache = KeyCache(self.engine, Metrics(self.registry), HASHER)
        self._admin = create_engine(url, pool_size=1)

    async def issue(self, **limit_settings: Any) -> str:
        """A new tenant with one key (and these limits on the tenant); returns the secret."""
        tenant_id, secret = new_id("ten"), generate_key()
        async with self._admin.begin() as conn:
            await conn.execute(insert(tenants).values(id=tenant_id, name=f"cache-{secrets.token_hex(3)}"))
            await conn.execute(
                insert(api_keys).values(
                    id=new_id("key"), tenant_id=tenant_id, prefix=secret[:15], key_hash=HASHER.hash(secret)
                )
            )
            if limit_settings:
                await conn.execute(insert(limits).values(subject_id=tenant_id, tenant_id=tenant_id, **limit_settings))
        return secret

    async def revoke(self, secret: str) -> None:
        """Revoke in Postgres only, without the notification meter's admin API sends."""
        async with self._admin.begin() as conn:
            await conn.execute(
                update(api_keys).where(api_keys.c.key_hash == HASHER.hash(secret)).values(status="revoked")
            )

    async def authenticate(self, secret: str) -> Caller:
        return await self.cache.authenticate({b"x-api-key": secret.encode()})

    def reads(self) -> float:
        """How many times the cache has asked Postgres for a key."""
        return self.registry.get_sample_value("meter_db_round_trips_total", {"purpose": "key_lookup"}) or 0.0

    async def warm_up(self) -> None:
        """Open the pool's connection first, so that a key read is one quick round trip."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
        await self._admin.dispose()


@pytest.fixture
async def keys(database_url: str) -> AsyncIterator[Keys]:
    keys = Keys(database_url)
    await keys.warm_up()
    yield keys
    await keys.close()


async def test_a_key_is_read_once_then_served_from_memory(keys: Keys) -> None:
    secret = await keys.issue(requests_per_minute=10)
    first = await keys.authenticate(secret)
    again = [await keys.authenticate(secret) for _ in range(10)]
    assert keys.reads() == 1
    assert again == [first] * 10
    assert first.limit_subjects == (first.tenant_id,) and first.needs_price is False


async def test_an_unknown_key_is_refused_and_the_miss_is_remembered_too(keys: Keys) -> None:
    stranger = generate_key()
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            await keys.authenticate(stranger)
    assert keys.reads() == 1


async def test_entries_expire_so_a_change_without_notification_is_seen(keys: Keys) -> None:
    secret = await keys.issue()
    await keys.authenticate(secret)
    await keys.revoke(secret)

    async def refused() -> bool:
        try:
            await keys.authenticate(secret)
        except AuthenticationFailed:
            return True
        return False

    await eventually_async(refused, waiting_for="the cached key to expire")


async def test_forget_makes_every_key_read_again(keys: Keys) -> None:
    revoked, kept = await keys.issue(), await keys.issue()
    for secret in (revoked, kept):
        await keys.authenticate(secret)
    await keys.revoke(revoked)
    keys.cache.forget()
    with pytest.raises(AuthenticationFailed):
        await keys.authenticate(revoked)
    await keys.authenticate(kept)
    assert keys.reads() == 4


async def test_withdraw_makes_that_key_read_again(keys: Keys) -> None:
    revoked, other = await keys.issue(), await keys.issue()
    for secret in (revoked, other):
        await keys.authenticate(secret)
    await keys.revoke(revoked)
    keys.cache.withdraw(HASHER.hash(revoked))
    keys.cache.withdraw(HASHER.hash(generate_key()))  # a key this process never saw: nothing to do
    with pytest.raises(AuthenticationFailed):
        await keys.authenticate(revoked)
    await keys.authenticate(other)
    assert keys.reads() == 3  # the other key came from memory


async def test_the_cache_is_emptied_when_full(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_CACHED_KEYS", 3)
    secrets_ = [await keys.issue() for _ in range(4)]
    for secret in secrets_[:3]:
        await keys.authenticate(secret)
    await keys.authenticate(secrets_[0])
    assert keys.reads() == 3  # not full yet: served from memory
    await keys.authenticate(secrets_[3])  # a fourth key: the cache starts over
    await keys.authenticate(secrets_[0])
    assert keys.reads() == 5


@pytest.fixture
def own_database(postgres_server: str) -> tuple[str, str]:
    """The name and URL of a database of this test's own, which it may close to connections."""
    name = f"meter_keys_{secrets.token_hex(3)}"
    url = create_database(postgres_server, name)
    migrate.upgrade(url)
    return name, url


async def refuse_connections(server_url: str, database: str, refuse: bool) -> None:
    """Postgres stops (or resumes) answering for `database`: new connections are refused and the
    open ones are closed, as in an outage."""
    import asyncpg

    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(not refuse).lower()}')
        if refuse:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
    finally:
        await conn.close()


async def test_while_postgres_is_away_recent_keys_are_served_but_never_a_withdrawn_one(
    postgres_server: str, own_database: tuple[str, str]
) -> None:
    database, url = own_database
    keys = Keys(url)
    try:
        await keys.warm_up()
        seen, withdrawn, unseen = await keys.issue(), await keys.issue(), await keys.issue()
        for secret in (seen, withdrawn):
            await keys.authenticate(secret)
        await refuse_connections(postgres_server, database, refuse=True)
        keys.cache.forget()  # every entry is to be read again, and cannot be
        keys.cache.withdraw(HASHER.hash(withdrawn))
        reads = keys.reads()
        assert (await keys.authenticate(seen)).key_id  # served as it was
        for secret in (withdrawn, unseen):
            with pytest.raises(Overloaded):
                await keys.authenticate(secret)
        assert keys.reads() == reads + 3  # each was tried in Postgres first
        await refuse_connections(postgres_server, database, refuse=False)
        await keys.authenticate(withdrawn)  # not revoked after all: it works again once it can be read
        await keys.authenticate(unseen)
    finally:
        await refuse_connections(postgres_server, database, refuse=False)
        await keys.close()
