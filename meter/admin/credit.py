"""Prepaid credit: top-ups and the balance. A tenant with credit is refused (400, "credit balance
is too low") once a request's worst case exceeds what is left."""

from __future__ import annotations

from decimal import Decimal

import msgspec
from litestar import Controller, get, post
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money
from meter.admin import audit
from meter.admin.limits import ensure_limits_row, tenant_of
from meter.admin.schema import ERRORS, SignedUsd, Text, check_usd
from meter.credentials import new_id
from meter.db import notices
from meter.db.models import credit_transactions, limits
from meter.errors import InvalidRequest, NotFound
from meter.proxy.auth import KeyCache


class TopUp(msgspec.Struct, forbid_unknown_fields=True):
    amount_usd: SignedUsd
    note: Text | None = None

    def __post_init__(self) -> None:
        check_usd("amount_usd", self.amount_usd, allow_negative=True)


class Balance(msgspec.Struct):
    tenant_id: str
    prepaid: bool
    balance_usd: str | None
    held_usd: str
    available_usd: str | None


async def add_credit(conn: AsyncConnection, tenant_id: str, top_up: TopUp, actor: str) -> Balance:
    """Add (or, negative, take back) credit; the tenant becomes prepaid with its first top-up."""
    if not tenant_id.startswith("ten_"):
        raise NotFound(f"No tenant with id {tenant_id!r}.")
    if top_up.amount_usd == 0:
        raise InvalidRequest("amount_usd: must not be zero")
    await ensure_limits_row(conn, tenant_id, await tenant_of(conn, tenant_id))
    await conn.execute(
        insert(credit_transactions).values(
            id=new_id("cred"), tenant_id=tenant_id, amount_usd=top_up.amount_usd, note=top_up.note
        )
    )
    await conn.execute(
        update(limits)
        .where(limits.c.subject_id == tenant_id)
        .values(credit_balance_usd=func.coalesce(limits.c.credit_balance_usd, 0) + top_up.amount_usd)
    )
    details = {"amount_usd": str(top_up.amount_usd), "note": top_up.note}
    await audit.record(conn, actor, "credit.add", tenant_id, details)
    await notices.keys_changed(conn)  # the tenant may have just become prepaid
    return await read_balance(conn, tenant_id)


async def read_balance(conn: AsyncConnection, tenant_id: str) -> Balance:
    await tenant_of(conn, tenant_id)
    row = (
        await conn.execute(
            select(limits.c.credit_balance_usd, limits.c.credit_held_usd).where(limits.c.subject_id == tenant_id)
        )
    ).first()
    balance, held = (row[0], row[1]) if row else (None, Decimal(0))
    return Balance(
        tenant_id=tenant_id,
        prepaid=balance is not None,
        balance_usd=money.usd_or_none(balance),
        held_usd=money.usd(held),
        available_usd=money.usd(balance - held) if balance is not None else None,
    )


class CreditController(Controller):
    @post(
        "/tenants/{tenant_id:str}/credits",
        summary="Top up (or adjust) a tenant's prepaid credit",
        status_code=200,
        responses=ERRORS,
    )
    async def top_up(self, tenant_id: str, data: TopUp, db: AsyncEngine, keys: KeyCache, actor: str) -> Balance:
        async with db.begin() as conn:
            balance = await add_credit(conn, tenant_id, data, actor)
        keys.forget()
        return balance

    @get(
        "/tenants/{tenant_id:str}/balance",
        summary="A tenant's prepaid credit: balance, held by requests in flight",
        responses=ERRORS,
    )
    async def balance(self, tenant_id: str, db: AsyncEngine) -> Balance:
        async with db.connect() as conn:
            return await read_balance(conn, tenant_id)
