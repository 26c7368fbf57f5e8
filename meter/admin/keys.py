"""Tenant keys: issued with the secret shown once, stored as a hash, revoked at will."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, post
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter.credentials import display_prefix, generate_key, hash_key, new_id
from meter.db.models import api_keys, tenants
from meter.errors import InvalidRequest, NotFound
from meter.proxy.auth import KeyCache


class KeyCreate(msgspec.Struct):
    name: str | None = None
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None


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


class IssuedKey(ApiKey):
    key: str  # the secret: returned here once, never again


_PUBLIC_COLUMNS = [c for c in api_keys.c if c.name != "key_hash"]


async def issue_key(conn: AsyncConnection, tenant_id: str, spec: KeyCreate) -> IssuedKey:
    if (await conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id))).first() is None:
        raise NotFound(f"No tenant with id {tenant_id!r}.")
    if spec.expires_at is not None and spec.expires_at.tzinfo is None:
        raise InvalidRequest("expires_at: must carry a time zone, e.g. 2027-01-01T00:00:00Z")
    secret = generate_key()
    row = (
        (
            await conn.execute(
                insert(api_keys)
                .values(
                    id=new_id("key"),
                    tenant_id=tenant_id,
                    name=spec.name,
                    prefix=display_prefix(secret),
                    key_hash=hash_key(secret),
                    expires_at=spec.expires_at,
                    allowed_models=spec.allowed_models or None,
                )
                .returning(*_PUBLIC_COLUMNS)
            )
        )
        .mappings()
        .one()
    )
    return IssuedKey(**row, key=secret)


async def revoke_key(conn: AsyncConnection, key_id: str) -> tuple[ApiKey, str]:
    """Revoke a key (revoking twice keeps the first time); returns it and its hash."""
    row = (
        (
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(status="revoked", revoked_at=func.coalesce(api_keys.c.revoked_at, func.now()))
                .returning(*_PUBLIC_COLUMNS, api_keys.c.key_hash)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"No key with id {key_id!r}.")
    values = dict(row)
    return ApiKey(**{k: v for k, v in values.items() if k != "key_hash"}), values["key_hash"]


class KeyController(Controller):
    @post("/tenants/{tenant_id:str}/keys", summary="Issue a key; the secret is in `key`, shown once")
    async def issue(self, tenant_id: str, data: KeyCreate, db: AsyncEngine) -> IssuedKey:
        async with db.begin() as conn:
            return await issue_key(conn, tenant_id, data)

    @post("/keys/{key_id:str}/revoke", summary="Revoke a key", status_code=200)
    async def revoke(self, key_id: str, db: AsyncEngine, keys: KeyCache) -> ApiKey:
        async with db.begin() as conn:
            key, key_hash = await revoke_key(conn, key_id)
        keys.forget(key_hash)
        return key
