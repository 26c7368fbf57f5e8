"""durable ledger: a commit-ordered cursor for the usage feed, and a quarantine for rejected rows

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TXID = "(pg_current_xact_id()::text)::bigint"


def upgrade() -> None:
    # Rows already there are older than any transaction to come: txid 0, numbered as they lie.
    op.add_column("usage_events", sa.Column("txid", sa.BigInteger(), nullable=False, server_default="0"))
    op.alter_column("usage_events", "txid", server_default=sa.text(TXID))
    op.add_column("usage_events", sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False))
    op.create_index("ix_usage_events_txid", "usage_events", ["txid", "seq"])
    op.create_table(
        "usage_quarantine",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_quarantine")),
    )


def downgrade() -> None:
    op.drop_table("usage_quarantine")
    op.drop_index("ix_usage_events_txid", table_name="usage_events")
    op.drop_column("usage_events", "seq")
    op.drop_column("usage_events", "txid")
