"""METER_LEDGER_RETENTION_MONTHS (meter/db/partitions.py) and the month arithmetic retention uses."""

from __future__ import annotations

from datetime import date

import pytest

from meter.db.partitions import is_partition, month_of, months_before
from meter.settings import ConfigError, Settings


def test_retention_is_unset_by_default_and_a_whole_number_of_months_at_least_one() -> None:
    assert Settings.from_env({}).ledger_retention_months is None
    assert Settings.from_env({"METER_LEDGER_RETENTION_MONTHS": "13"}).ledger_retention_months == 13
    for wrong, message in (
        ("0", "at least 1"),
        ("-2", "at least 1"),
        ("1.5", "not a valid value"),
        ("a", "not a valid value"),
    ):
        with pytest.raises(ConfigError, match=message):
            Settings.from_env({"METER_LEDGER_RETENTION_MONTHS": wrong})


def test_months_before_crosses_years_and_partition_names_are_recognised() -> None:
    assert months_before(date(2027, 1, 1), 1) == date(2026, 12, 1)
    assert months_before(date(2027, 3, 1), 15) == date(2025, 12, 1)
    assert months_before(date(2026, 12, 1), -2) == date(2027, 2, 1)
    assert month_of("usage_events_2026_12") == date(2026, 12, 1)
    assert month_of("usage_events_default") is None and is_partition("usage_events_default")
    assert not is_partition("usage_events") and not is_partition("usage_events_2026_12_old")
