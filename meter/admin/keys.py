"""Tenant keys: issued with the secret shown once, stored as a hash, listed, rotated, revoked.

A rotation gives a key a new secret and keeps the previous one working for a grace period the
operator chooses, so clients can move over without downtime. The key keeps its id, limits and
usage history.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.params import Parameter
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter.admin import audit
from meter.admin.pagination import fetch_page
from meter.admin.schema import ERRORS, ModelId, Text
from meter.admin.tenants import get_tenant
from meter.credentials import KeyHasher, display_prefix, generate_key, new_id
from meter.db import notices
from meter.db.models import api_keys
from meter.errors import InvalidRequest, NotFound
from meter.proxy.auth import KeyCache


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Text | None = None
    expires_at: datetime | None = None
    allowed_models: list[ModelId] | None = None


class KeyRotate(msgspec.Struct, forbid_unknown_fields=True):
    # How long the previous secret keeps working; 0 stops it at once.
    grace_period_s: Annotated[int, msgspec.Meta(ge=0, le=90 * 24 * 3600)] = 3600


class ApiKey(msgspec.Struct):
    id: str
    tenant_id: str
    name: str | None
    prefix: str
    status: str
    allowed_models: list[str] | None
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    previous_valid_until: datetime | None


class IssuedKey(ApiKey):
    key: str  # the secret: returned here once, never again


class KeyPage(msgspec.Struct):
    data: list[ApiKey]
    next_cursor: str | None


_PUBLIC = [api_keys.c[name] for name in ApiKey.__struct_fields__]


async def issue_key(conn: AsyncConnection, tenant_id: str, spec: KeyCreate, actor: str, hasher: KeyHasher) -> IssuedKey:
    await get_tenant(conn, tenant_id)
    if spec.expires_at is not None:
        if spec.expires_at.tzinfo is None:
            raise InvalidRequest("expires_at: must carry a time zone, e.g. 2027-01-01T00:00:00Z")
        if spec.expires_at <= datetime.now(UTC):
            raise InvalidRequest("expires_at: must be in the future")
    secret = generate_key()
    values = {
        "id": new_id("key"),
        "tenant_id": tenant_id,
        "name": spec.name,
        "prefix": display_prefix(secret),
        "key_hash": hasher.hash(secret),
        "expires_at": spec.expires_at,
        "allowed_models": sorted(set(spec.allowed_models)) if spec.allowed_models else None,
    }
    row = (await conn.execute(insert(api_keys).values(**values).returning(*_PUBLIC))).mappings().one()
    await audit.record(conn, actor, "key.issue", row["id"], {"tenant_id": tenant_id, **msgspec.to_builtins(spec)})
    return IssuedKey(**row, key=secret)


async def list_keys(conn: AsyncConnection, tenant_id: str, after: str | None, limit: int) -> KeyPage:
    await get_tenant(conn, tenant_id)
    query = select(*_PUBLIC).where(api_keys.c.tenant_id == tenant_id)
    rows, next_cursor = await fetch_page(conn, query, api_keys.c.id, after, limit)
    return KeyPage(data=[ApiKey(**row) for row in rows], next_cursor=next_cursor)


async def revoke_key(conn: AsyncConnection, key_id: str, actor: str) -> ApiKey:
    """Revoke a key and any previous secret it still honours (revoking twice keeps the first time)."""
    row = await _change(
        conn,
        key_id,
        status="revoked",
        revoked_at=func.coalesce(api_keys.c.revoked_at, func.now()),
        previous_valid_until=None,
    )
    await audit.record(conn, actor, "key.revoke", key_id)
    return ApiKey(**row)


async def rotate_key(conn: AsyncConnection, key_id: str, rotate: KeyRotate, actor: str, hasher: KeyHasher) -> IssuedKey:
    current = (await conn.execute(select(api_keys.c.status).where(api_keys.c.id == key_id))).scalar()
    if current is None:
        raise NotFound(f"No key with id {key_id!r}.")
    if current != "active":
        raise InvalidRequest("A revoked key cannot be rotated; issue a new one.")
    secret = generate_key()
    row = await _change(
        conn,
        key_id,
        previous_key_hash=api_keys.c.key_hash,
        previous_valid_until=func.now() + timedelta(seconds=rotate.grace_period_s),
        key_hash=hasher.hash(secret),
        prefix=display_prefix(secret),
    )
    await audit.record(conn, actor, "key.rotate", key_id, {"grace_period_s": rotate.grace_period_s})
    return IssuedKey(**row, key=secret)


async def _change(conn: AsyncConnection, key_id: str, **values: Any) -> Any:
    hashes = (api_keys.c.key_hash, api_keys.c.previous_key_hash)
    before = (await conn.execute(select(*hashes).where(api_keys.c.id == key_id).with_for_update())).first()
    if before is None:
        raise NotFound(f"No key with id {key_id!r}.")
    updated = update(api_keys).where(api_keys.c.id == key_id).values(**values).returning(*_PUBLIC, *hashes)
    row = (await conn.execute(updated)).mappings().one()
    # Every secret the key had or has is re-read by every process, and never served from a stale cache.
    await notices.keys_withdrawn(conn, [*before, row["key_hash"], row["previous_key_hash"]])
    return {name: row[name] for name in ApiKey.__struct_fields__}


class KeyController(Controller):
    @post("/tenants/{tenant_id:str}/keys", summary="Issue a key; the secret is in `key`, shown once", responses=ERRORS)
    async def issue(self, tenant_id: str, data: KeyCreate, db: AsyncEngine, actor: str, hasher: KeyHasher) -> IssuedKey:
        async with db.begin() as conn:
            return await issue_key(conn, tenant_id, data, actor, hasher)

    @get("/tenants/{tenant_id:str}/keys", summary="A tenant's keys (never their secrets)", responses=ERRORS)
    async def list(
        self,
        tenant_id: str,
        db: AsyncEngine,
        after: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> KeyPage:
        async with db.connect() as conn:
            return await list_keys(conn, tenant_id, after, limit)

    @post("/keys/{key_id:str}/revoke", summary="Revoke a key on every meter process", status_code=200, responses=ERRORS)
    async def revoke(self, key_id: str, db: AsyncEngine, keys: KeyCache, actor: str) -> ApiKey:
        async with db.begin() as conn:
            key = await revoke_key(conn, key_id, actor)
        keys.forget()
        return key

    @post(
        "/keys/{key_id:str}/rotate",
        summary="New secret; the old one works for grace_period_s",
        status_code=200,
        responses=ERRORS,
    )
    async def rotate(
        self,
        key_id: str,
        db: AsyncEngine,
        keys: KeyCache,
        actor: str,
        hasher: KeyHasher,
        data: KeyRotate | None = None,
    ) -> IssuedKey:
        async with db.begin() as conn:
            key = await rotate_key(conn, key_id, data or KeyRotate(), actor, hasher)
        keys.forget()
        return key
