"""What the request path hands to the ledger writer: typed rows, whose field names are the columns
of the statement that writes them (db/queries.py builds it from these definitions).

    LedgerRow    one row of `usage_events`: what one tenant request did and cost
    Settlement   the exact usage that replaces a request's limit reservation (meter_settle's input)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from meter.money import decimal_text
from meter.pricing import Cost
from meter.usage import Usage


class LedgerRow(msgspec.Struct, kw_only=True):
    request_id: str
    tenant_id: str
    key_id: str
    model: str | None
    endpoint: str
    stream: bool
    status: int
    error_type: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation_5m_input_tokens: int
    cache_creation_1h_input_tokens: int
    cache_read_input_tokens: int
    # None when the model has no price: never a silent $0.
    cost_usd: Decimal | None
    partial: bool
    stop_reason: str | None
    upstream_request_id: str | None
    started_at: datetime
    finished_at: datetime
    duration_ms: int
    ttfb_ms: int | None
    # The rest of the usage (meter/usage.py) and how the cost came about; absent for most calls.
    server_tool_use: dict[str, int] | None = None
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None
    iterations: list[dict[str, Any]] | None = None
    usage_extra: dict[str, Any] | None = None
    response_model: str | None = None
    fees: dict[str, dict[str, Any]] | None = None
    long_context: bool = False


class Settlement(msgspec.Struct, kw_only=True):
    """What meter_settle (see the 0007 migration) reads. `tokens` and `usd` are what the request's
    ledger row counts against limits and costs: the ledger's batch statement settles the rows it
    inserts with their own usage (summed per hold), `queries.settle`, for a row never inserted,
    with these. Kept in the spool with the row: every version of meter that may replay it reads them."""

    hold: str
    request_id: str
    subjects: list[str]
    day: str
    month: str
    tokens: int
    usd: Decimal  # exact; encoded as a decimal string
    # A share of a lease: only what was used leaves it (a request's own hold is released whole).
    lease: bool = False


# Stop reasons, error types, tiers and request ids are short; an upstream that sends more is cut.
MAX_TEXT = 256
LEDGER_FIELDS: tuple[str, ...] = LedgerRow.__struct_fields__
# Fields stored as JSONB: sent to Postgres as JSON text.
JSON_FIELDS = frozenset({"server_tool_use", "iterations", "usage_extra", "fees"})


def billed_columns(usage: Usage, cost: Cost | None) -> dict[str, Any]:
    """The columns of a ledger row that say what a call used and cost: the same for a request
    (proxy/recorder.py) and a batch result (batches/billing.py). `cost` None: the model has no price."""
    return {
        **usage.billed_counters(),
        "server_tool_use": usage.server_tool_use or None,
        "service_tier": stored_text(usage.service_tier),
        "inference_geo": stored_text(usage.inference_geo),
        "speed": stored_text(usage.speed),
        "iterations": usage.iterations,
        "usage_extra": usage.extra or None,
        "cost_usd": None if cost is None else cost.total,
        "fees": {name: {"units": units, "usd": decimal_text(usd)} for name, (units, usd) in cost.fees.items()}
        if cost is not None and cost.fees
        else None,
        "long_context": cost is not None and cost.long_context,
    }


def stored_text(value: object) -> str | None:
    """A string the upstream sent, as the ledger can store it whatever it was: no NUL, bounded."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "")[:MAX_TEXT]
