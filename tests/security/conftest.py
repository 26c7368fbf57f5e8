"""The meters of the hostile-input suite, beside the session's default one (tests/conftest.py): a
guarded meter with short deadlines and small admission bounds, and a meter in front of an upstream
that leaks every header it should not, with a small connection cap."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Process, free_port, start_meter

REPO = Path(__file__).resolve().parents[2]
CORS_ORIGIN = "https://app.example"
# Short deadlines (so a slow client is cut off within the test) and small bounds (so a test can
# reach them with a few connections; the failed-authentication budget refills once every 20 s).
GUARDED = {
    "METER_HEADER_TIMEOUT_S": "2",
    "METER_BODY_TIMEOUT_S": "2",
    "METER_MAX_IN_FLIGHT": "3",
    "METER_TENANT_MAX_IN_FLIGHT": "2",
    "METER_TENANT_MAX_DRAINS": "1",
    "METER_CORS_ORIGINS": CORS_ORIGIN,
    "METER_AUTH_FAILURES_PER_MINUTE": "3",
}
MAX_CONNECTIONS = 3


@pytest.fixture(scope="session")
def guarded(database_url: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_meter(database_url, upstream.base_url, tmp_path_factory.mktemp("guarded"), **GUARDED)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def hostile_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    port = free_port()
    process = Process(
        [sys.executable, "-m", "tests.security.hostile_upstream", "--port", str(port)],
        {"PYTHONPATH": str(REPO)},
        f"http://127.0.0.1:{port}",
        "/ready",
        log_path=tmp_path_factory.mktemp("hostile") / "hostile.log",
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def exposed(
    database_url: str, hostile_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """A meter in front of the leaking upstream, serving at most MAX_CONNECTIONS connections."""
    process = start_meter(
        database_url,
        hostile_upstream.base_url,
        tmp_path_factory.mktemp("exposed"),
        METER_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    yield process
    process.stop()
