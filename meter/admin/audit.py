"""The audit log: who changed what, when, through the operator API or the CLI."""

from __future__ import annotations

import getpass
import hashlib
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.params import Parameter
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter.admin.pagination import fetch_page
from meter.admin.schema import ERRORS
from meter.credentials import new_id
from meter.db.models import audit_log


def token_actor(admin_token: str) -> str:
    """Names the admin token without revealing it."""
    return "admin-token:" + hashlib.sha256(admin_token.encode()).hexdigest()[:8]


# Changes made in the operator console (meter/console), whoever signed in with the admin token.
CONSOLE_ACTOR = "console"


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


async def record(
    conn: AsyncConnection, actor: str, action: str, subject_id: str | None, details: dict[str, Any] | None = None
) -> None:
    """Add an audit entry in the caller's transaction: it exists exactly when the change does."""
    await conn.execute(
        insert(audit_log).values(
            id=new_id("audit"),
            actor=actor,
            action=action,
            subject_id=subject_id,
            details=msgspec.to_builtins(details or {}),
        )
    )


class AuditEntry(msgspec.Struct):
    id: str
    at: datetime
    actor: str
    action: str
    subject_id: str | None
    details: dict[str, Any]


class AuditPage(msgspec.Struct):
    data: list[AuditEntry]
    next_cursor: str | None


async def list_audit(
    conn: AsyncConnection, subject_id: str | None, after: str | None, limit: int, newest_first: bool = False
) -> AuditPage:
    query = select(audit_log)
    if subject_id:
        query = query.where(audit_log.c.subject_id == subject_id)
    rows, next_cursor = await fetch_page(conn, query, audit_log.c.id, after, limit, newest_first)
    return AuditPage(data=[AuditEntry(**row) for row in rows], next_cursor=next_cursor)


class AuditController(Controller):
    @get("/audit", summary="Admin changes, oldest first, with cursor pagination", responses=ERRORS)
    async def list(
        self,
        db: AsyncEngine,
        subject_id: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> AuditPage:
        async with db.connect() as conn:
            return await list_audit(conn, subject_id, after, limit)
