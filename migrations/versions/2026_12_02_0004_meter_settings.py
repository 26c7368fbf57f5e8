"""meter_settings: what every process of one database must agree on (the key pepper's fingerprint)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meter_settings",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_meter_settings")),
    )


def downgrade() -> None:
    op.drop_table("meter_settings")
