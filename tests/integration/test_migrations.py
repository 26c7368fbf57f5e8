"""Migrations are the schema: one head, reversible, and equal to the models."""

from __future__ import annotations

import secrets

from meter.db import migrate
from tests.support import create_database


def test_single_head() -> None:
    assert len(migrate.current_heads("postgresql://unused/db")) == 1


def test_upgrade_downgrade_upgrade_and_check(postgres_server: str) -> None:
    url = create_database(postgres_server, f"meter_mig_{secrets.token_hex(3)}")
    migrate.upgrade(url)
    migrate.check(url)
    migrate.downgrade(url, "base")
    migrate.upgrade(url)
    migrate.check(url)
