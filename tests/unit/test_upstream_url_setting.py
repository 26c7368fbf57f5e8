"""METER_UPSTREAM_URL: refused at start unless the upstream client can connect to it."""

from __future__ import annotations

import pytest

from meter.settings import ConfigError, Settings


def test_the_upstream_url_must_name_a_host_and_a_valid_port() -> None:
    assert Settings.from_env({"METER_UPSTREAM_URL": "http://127.0.0.1:8100/base"}).upstream_url
    wrongs = ("ftp://nope", "https://", "https://:443", "http://host:99999", "http://host:port", "api.anthropic.com")
    for wrong in wrongs:
        with pytest.raises(ConfigError, match="METER_UPSTREAM_URL must be an http"):
            Settings.from_env({"METER_UPSTREAM_URL": wrong})
