"""The webhook settings from the environment, and through `meter serve --workers N`'s hand-over."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter.cli.serve import _worker_environment
from meter.settings import ConfigError, Settings


def test_the_retry_schedule_is_seconds_separated_by_commas() -> None:
    assert Settings().webhook_retry_s == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    assert Settings.from_env({"METER_WEBHOOK_RETRY_S": "1,2.5"}).webhook_retry_s == (1.0, 2.5)
    for bad in ("a,b", "1,,2", "-1"):
        with pytest.raises(ConfigError):
            Settings.from_env({"METER_WEBHOOK_RETRY_S": bad})
    for name in ("METER_WEBHOOK_CHECK_S", "METER_WEBHOOK_POLL_S", "METER_WEBHOOK_TIMEOUT_S"):
        with pytest.raises(ConfigError):
            Settings.from_env({name: "0"})


def test_workers_get_the_same_schedule(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, webhook_retry_s=(0.5, 60.0), webhook_timeout_s=3.0)
    again = Settings.from_env(_worker_environment(settings))
    assert (again.webhook_retry_s, again.webhook_timeout_s) == ((0.5, 60.0), 3.0)
