"""every billable field of a call on its ledger row; prices with fees, multipliers, long-context tiers,
context windows; money as exact unconstrained numeric

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 19:00:00.000000
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

MONEY_COLUMNS = {
    "usage_events": ("cost_usd",),
    "usage_daily": ("cost_usd",),
    "holds": ("usd",),
    "credit_transactions": ("amount_usd",),
    "limits": (
        "budget_usd_per_day",
        "budget_usd_per_month",
        "credit_balance_usd",
        "credit_held_usd",
        "day_usd",
        "day_usd_held",
        "month_usd",
        "month_usd_held",
    ),
}

# What the seeded models' prices gain, from Anthropic's pricing page as shared/anthropic-protocol.md
# section 9 read it (mirror stamped "last verified 2026-08-07"): web search $10 per 1,000 searches
# (web fetch has no fee), Batch 50% off, `inference_geo: "us"` 1.1x on 4.6+ models, fast mode on
# Opus 4.8 at $10/$50 (2x), 1M context on 4.6+ models (and on Sonnet 4/4.5 with the 1M beta).
SOURCE = "Anthropic pricing page, read through a mirror stamped 2026-08-07 (shared/anthropic-protocol.md section 9)"
FEES = {"web_search_requests": "0.01"}
BATCH = {"service_tier": {"batch": "0.5"}}
GEO_US = {"inference_geo": {"us": "1.1"}}
MODELS_46_PLUS = ("claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-6", "claude-sonnet-4-6")
ONE_MILLION = ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-0", "claude-sonnet-4-20250514")
# Sonnet 4 and 4.5 above 200K input tokens with the 1M beta, per the 2025 pricing page; whether this
# still applies is not confirmed by the 2026 page, so these rows are marked unverified.
SONNET_LONG_CONTEXT = {
    "above_input_tokens": 200000,
    "input_per_mtok": "6",
    "output_per_mtok": "22.5",
    "cache_write_5m_per_mtok": "7.5",
    "cache_write_1h_per_mtok": "12",
    "cache_read_per_mtok": "0.6",
}


def upgrade() -> None:
    for table, columns in MONEY_COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.Numeric(), existing_type=sa.Numeric(24, 12))
    jsonb = postgresql.JSONB(astext_type=sa.Text())
    for name, kind in (
        ("server_tool_use", jsonb),
        ("service_tier", sa.Text()),
        ("inference_geo", sa.Text()),
        ("speed", sa.Text()),
        ("iterations", jsonb),
        ("usage_extra", jsonb),
        ("response_model", sa.Text()),
        ("fees", jsonb),
    ):
        op.add_column("usage_events", sa.Column(name, kind, nullable=True))
    op.add_column("usage_events", sa.Column("long_context", sa.Boolean(), server_default="false", nullable=False))
    op.add_column("prices", sa.Column("server_tool_fees", jsonb, server_default="{}", nullable=False))
    op.add_column("prices", sa.Column("multipliers", jsonb, server_default="{}", nullable=False))
    op.add_column("prices", sa.Column("long_context", jsonb, nullable=True))
    op.add_column("prices", sa.Column("context_window", sa.Integer(), nullable=True))
    op.add_column("prices", sa.Column("max_output_tokens", sa.Integer(), nullable=True))
    op.add_column("prices", sa.Column("verified", sa.Boolean(), server_default="false", nullable=False))
    op.add_column("prices", sa.Column("source", sa.Text(), nullable=True))

    # The seeded list prices (migration 0001) gain what the same page says about them.
    seeded = "effective_from = '2025-01-01T00:00:00+00:00'"
    update = sa.text(
        f"UPDATE prices SET server_tool_fees = CAST(:fees AS jsonb), multipliers = CAST(:multipliers AS jsonb), "
        f"long_context = CAST(:long_context AS jsonb), context_window = :window, verified = :verified, "
        f"source = :source WHERE model = :model AND {seeded}"
    )
    models = [row[0] for row in op.get_bind().execute(sa.text(f"SELECT model FROM prices WHERE {seeded}"))]
    for model in models:
        multipliers = {**BATCH, **(GEO_US if model in MODELS_46_PLUS else {})}
        if model == "claude-opus-4-8":
            multipliers["speed"] = {"fast": "2"}
        long_context = SONNET_LONG_CONTEXT if model in ONE_MILLION else None
        window = 1_000_000 if model in MODELS_46_PLUS or model in ONE_MILLION else 200_000
        op.get_bind().execute(
            update,
            {
                "fees": json.dumps(FEES),
                "multipliers": json.dumps(multipliers),
                "long_context": json.dumps(long_context) if long_context else None,
                "window": window,
                "verified": long_context is None,
                "source": SOURCE if long_context is None else SOURCE + "; long-context prices from the 2025 page",
                "model": model,
            },
        )


def downgrade() -> None:
    for name in ("source", "verified", "max_output_tokens", "context_window", "long_context", "multipliers"):
        op.drop_column("prices", name)
    op.drop_column("prices", "server_tool_fees")
    for name in (
        "long_context",
        "fees",
        "response_model",
        "usage_extra",
        "iterations",
        "speed",
        "inference_geo",
        "service_tier",
        "server_tool_use",
    ):
        op.drop_column("usage_events", name)
    for table, columns in MONEY_COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.Numeric(24, 12), existing_type=sa.Numeric())
