"""One headless Chromium for the session (Debian's `chromium`, driven by Playwright), and where
the browser tests leave their screenshots. Without a browser the tests are skipped, except in CI
(env CI set), where a missing browser is a failure."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meter.db import migrate
from tests.support import Process, create_database, start_meter

CHROMIUM = os.environ.get("METER_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"


# Module scope: Playwright's sync API runs an event loop on the test thread while it is open, which
# later tests' asyncio.run would collide with; it is closed when the browser tests are done.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(
                f"CI needs a browser for the console tests: no chromium at {CHROMIUM} (apt-get install chromium)"
            )
        pytest.skip(f"no chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium) to run these")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def console_meter(
    console_database: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """A meter over a database of its own, so the pages (and their screenshots) show only what the
    browser tests made."""
    process = start_meter(console_database, upstream.base_url, tmp_path_factory.mktemp("console-meter"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def console_database(postgres_server: str) -> str:
    url = create_database(postgres_server, f"meter_console_{os.getpid()}_{secrets.token_hex(3)}")
    migrate.upgrade(url)
    return url
