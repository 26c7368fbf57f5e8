"""The settings of a database behind a transaction pooler (docs/scaling.md)."""

from __future__ import annotations

import pytest

from meter.settings import ConfigError, Settings

DIRECT = "postgresql://meter@postgres:5432/meter"
POOLED = "postgresql://meter@pgbouncer:6432/meter"


def test_listen_url_defaults_to_the_database_url() -> None:
    assert Settings.from_env({"METER_DATABASE_URL": DIRECT}).listen_url() == DIRECT
    both = Settings.from_env({"METER_DATABASE_URL": POOLED, "METER_LISTEN_DATABASE_URL": DIRECT})
    assert (both.database_url, both.listen_url()) == (POOLED, DIRECT)


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("1", True), ("Yes", True), ("off", False), ("0", False)])
def test_transaction_pooling_is_a_yes_no_setting(raw: str, value: bool) -> None:
    env = {"METER_DATABASE_URL": POOLED, "METER_LISTEN_DATABASE_URL": DIRECT}
    assert Settings.from_env({**env, "METER_DATABASE_TRANSACTION_POOLING": raw}).database_transaction_pooling is value


def test_transaction_pooling_needs_a_listen_url_and_takes_only_yes_or_no() -> None:
    with pytest.raises(ConfigError, match="needs METER_LISTEN_DATABASE_URL"):
        Settings.from_env({"METER_DATABASE_URL": POOLED, "METER_DATABASE_TRANSACTION_POOLING": "true"})
    with pytest.raises(ConfigError, match="METER_DATABASE_TRANSACTION_POOLING is not a valid value"):
        Settings.from_env({"METER_DATABASE_TRANSACTION_POOLING": "sometimes"})
    with pytest.raises(ConfigError, match="METER_LISTEN_DATABASE_URL must be a postgresql:// URL"):
        Settings.from_env({"METER_LISTEN_DATABASE_URL": "mysql://x"})
