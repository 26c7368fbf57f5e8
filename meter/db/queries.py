"""The hot path's SQL, written out: one key lookup, one batched ledger insert; and the few reads
of background tasks (budget gauges, readiness)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import msgspec
from sqlalchemy import func, or_, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from meter import periods
from meter.db.models import LIMIT_SETTINGS, api_keys, limits, tenants, usage_events
from meter.db.rows import JSON_FIELDS, LEDGER_FIELDS, LedgerRow, Settlement
from meter.usage import COUNTERS

_tenant_limits = limits.alias("tenant_limits")
_key_limits = limits.alias("key_limits")
# A subject is limited if any setting is, or it has prepaid credit.
_LIMIT_COLUMNS = (*LIMIT_SETTINGS, "credit_balance_usd")
_MONEY_COLUMNS = ("budget_usd_per_day", "budget_usd_per_month", "credit_balance_usd")


def _is_limited(table: Any) -> Any:
    return or_(*(table.c[name].is_not(None) for name in _LIMIT_COLUMNS))


def _needs_price(table: Any) -> Any:
    return or_(*(table.c[name].is_not(None) for name in _MONEY_COLUMNS))


async def key_by_hash(conn: AsyncConnection, hashes: Sequence[str]) -> dict[str, Any] | None:
    """The key with one of these hashes (current, or previous after a rotation), its tenant's
    status, and whether either has limits: or None."""
    query = (
        select(
            api_keys.c.id,
            api_keys.c.tenant_id,
            api_keys.c.status,
            api_keys.c.expires_at,
            api_keys.c.allowed_models,
            api_keys.c.key_hash,
            api_keys.c.previous_key_hash,
            api_keys.c.previous_valid_until,
            tenants.c.status.label("tenant_status"),
            func.coalesce(_is_limited(_tenant_limits), False).label("tenant_limited"),
            func.coalesce(_is_limited(_key_limits), False).label("key_limited"),
            func.coalesce(or_(_needs_price(_tenant_limits), _needs_price(_key_limits)), False).label("needs_price"),
        )
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .outerjoin(_tenant_limits, _tenant_limits.c.subject_id == api_keys.c.tenant_id)
        .outerjoin(_key_limits, _key_limits.c.subject_id == api_keys.c.id)
        .where(or_(api_keys.c.key_hash.in_(hashes), api_keys.c.previous_key_hash.in_(hashes)))
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


_REHASH = text(
    """
UPDATE api_keys SET
    key_hash = CASE WHEN key_hash = :old THEN :new ELSE key_hash END,
    previous_key_hash = CASE WHEN previous_key_hash = :old THEN :new ELSE previous_key_hash END
WHERE id = :id
"""
)


async def rehash_key(conn: AsyncConnection, key_id: str, old: str, new: str) -> None:
    """Replace a key's legacy hash by its peppered one."""
    await conn.execute(_REHASH, {"id": key_id, "old": old, "new": new})


# The ledger row's fields are the insert's columns; each is sent as an array of its column's type.
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_ARRAY_TYPES = {name: usage_events.c[name].type.compile(dialect=_DIALECT) for name in LEDGER_FIELDS}
_ROLLUP_COUNTERS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
)
_names = ", ".join(LEDGER_FIELDS)
# What a row counts against token limits (Usage.total_tokens).
_ROW_TOKENS = " + ".join(f"i.{name}" for name in COUNTERS)

# One statement, one round trip, atomic: insert the rows (a request id already there is skipped, so
# a retried batch is harmless), and for the rows actually inserted, and only those, add them to the
# daily rollups, note when each key was last used, and settle their limit reservations with the
# usage of their rows (summed per hold first: a lease's many settlements in a batch become one).
_WRITE_BATCH = text(
    f"""
WITH inserted AS (
    INSERT INTO usage_events ({_names})
    SELECT * FROM unnest({", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _ARRAY_TYPES.items())})
    ON CONFLICT (request_id, started_at) DO NOTHING
    RETURNING *
), daily AS (
    INSERT INTO usage_daily AS d (tenant_id, day, key_id, model, requests, {", ".join(_ROLLUP_COUNTERS)}, cost_usd,
                                  unpriced_requests)
    SELECT tenant_id, (started_at AT TIME ZONE 'UTC')::date, key_id, COALESCE(model, ''), count(*),
           {", ".join(f"sum({name})" for name in _ROLLUP_COUNTERS)}, COALESCE(sum(cost_usd), 0),
           count(*) FILTER (WHERE cost_usd IS NULL)
    FROM inserted GROUP BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, day, key_id, model) DO UPDATE SET
        requests = d.requests + excluded.requests,
        {", ".join(f"{name} = d.{name} + excluded.{name}" for name in _ROLLUP_COUNTERS)},
        cost_usd = d.cost_usd + excluded.cost_usd,
        unpriced_requests = d.unpriced_requests + excluded.unpriced_requests
), last_use AS (
    UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.last)
    FROM (SELECT key_id, max(started_at) AS last FROM inserted GROUP BY key_id) u
    WHERE k.id = u.key_id
), settled AS (
    SELECT g.hold, g.lease, string_to_array(g.subjects, ',') AS subjects, g.day, g.month,
           sum({_ROW_TOKENS}) AS tokens, COALESCE(sum(i.cost_usd), 0) AS usd
    FROM unnest(CAST(:s_request_id AS text[]), CAST(:s_hold AS integer[])) AS s(request_id, hold_n)
    JOIN inserted i USING (request_id)  -- one row a request id: a request's rows share started_at
    JOIN unnest(CAST(:h_id AS text[]), CAST(:h_lease AS boolean[]), CAST(:h_subjects AS text[]),
                CAST(:h_day AS date[]), CAST(:h_month AS date[]))
         WITH ORDINALITY AS g(hold, lease, subjects, day, month, n) ON g.n = s.hold_n
    GROUP BY 1, 2, 3, 4, 5
)
SELECT meter_settle(COALESCE((SELECT jsonb_agg(settled) FROM settled), '[]'::jsonb))
"""
)


async def write_ledger_batch(
    conn: AsyncConnection, rows: Sequence[LedgerRow], settlements: Sequence[Settlement]
) -> None:
    """Write ledger rows, their rollups and their settlements (see _WRITE_BATCH)."""
    by_column = zip(*map(msgspec.structs.astuple, rows), strict=True) if rows else ([] for _ in LEDGER_FIELDS)
    columns: dict[str, Any] = {
        name: [_json(value) for value in values] if name in JSON_FIELDS else list(values)
        for name, values in zip(LEDGER_FIELDS, by_column, strict=True)
    }
    await conn.execute(_WRITE_BATCH, {**columns, **_settlement_columns(settlements)})


def _settlement_columns(settlements: Sequence[Settlement]) -> dict[str, list[Any]]:
    """Settlements as the batch statement's arrays: per settlement its request id and the index of
    its hold, and per hold (a lease's many settlements share one) what meter_settle needs of it,
    subject ids (which never hold a comma) joined by commas. The usage settled is the row's own."""
    holds: dict[tuple[str, bool, tuple[str, ...], str, str], int] = {}
    # Request id -> its hold's index. A row queued twice in a batch (batch billing retried while the
    # first copy waits) is inserted once, so it is settled once.
    settled: dict[str, int] = {}
    for s in settlements:
        hold = holds.setdefault((s.hold, s.lease, tuple(s.subjects), s.day, s.month), len(holds) + 1)
        settled.setdefault(s.request_id, hold)
    return {
        "s_request_id": list(settled),
        "s_hold": list(settled.values()),
        "h_id": [hold for hold, _, _, _, _ in holds],
        "h_lease": [lease for _, lease, _, _, _ in holds],
        "h_subjects": [",".join(subjects) for _, _, subjects, _, _ in holds],
        "h_day": [date.fromisoformat(day) for _, _, _, day, _ in holds],
        "h_month": [date.fromisoformat(month) for _, _, _, _, month in holds],
    }


_BUDGETS = text(
    """
SELECT subject_id AS tenant_id,
       CASE WHEN day = :day THEN day_usd ELSE 0 END AS day_usd,
       CASE WHEN month = :month THEN month_usd ELSE 0 END AS month_usd,
       budget_usd_per_day, budget_usd_per_month, credit_balance_usd
FROM limits
WHERE subject_id = tenant_id
  AND (budget_usd_per_day IS NOT NULL OR budget_usd_per_month IS NOT NULL OR credit_balance_usd IS NOT NULL)
"""
)


async def tenant_budgets(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every tenant with a USD budget or prepaid credit, with what it spent this day and month."""
    day = periods.today()
    period = {"day": day, "month": periods.month_start(day)}
    return [dict(row) for row in (await conn.execute(_BUDGETS, period)).mappings()]


def _json(value: Any) -> str | None:
    """JSON text Postgres's jsonb accepts: it refuses the NUL character, which an upstream's extra
    usage fields could carry, so NULs are dropped from every string first."""
    if value is None:
        return None
    return msgspec.json.encode(_without_nul(value)).decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


async def settle(conn: AsyncConnection, settlements: Sequence[Settlement]) -> None:
    """Settle reservations without their ledger rows (for rows Postgres refused)."""
    await conn.execute(
        text("SELECT meter_settle(CAST(:settlements AS jsonb))"),
        {"settlements": msgspec.json.encode(settlements).decode()},
    )


async def migration_heads(conn: AsyncConnection) -> set[str]:
    """The migrations the database is at."""
    return set((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


async def agreed_setting(conn: AsyncConnection, name: str, value: str) -> str:
    """The database's value of setting `name`, which becomes `value` if it has none yet."""
    insert_new = text("INSERT INTO meter_settings (name, value) VALUES (:name, :value) ON CONFLICT DO NOTHING")
    await conn.execute(insert_new, {"name": name, "value": value})
    stored = await conn.execute(text("SELECT value FROM meter_settings WHERE name = :name"), {"name": name})
    return str(stored.scalar_one())


_QUARANTINE = text("INSERT INTO usage_quarantine (request_id, record, error) VALUES (:request_id, :record, :error)")


async def quarantine(conn: AsyncConnection, request_id: str, record: str, error: str) -> None:
    """Keep a ledger row Postgres rejected, as the spool wrote it, with the reason (NULs dropped:
    a text column refuses them, and JSON text escapes every one it carries)."""
    clean = {"request_id": request_id, "record": record, "error": error}
    await conn.execute(_QUARANTINE, {name: value.replace("\x00", "") for name, value in clean.items()})
