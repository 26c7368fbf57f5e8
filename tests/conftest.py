"""Shared fixtures: one real Postgres per test session (the server named by
METER_TEST_DATABASE_URL, else an embedded one), a demo upstream and a meter process on sockets."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meter.db import migrate
from tests.support import Admin, EmbeddedPostgres, Ledger, Process, create_database, start_demo_upstream, start_meter


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Postgres server the tests may create databases on."""
    url = os.environ.get("METER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    yield embedded.url()
    embedded.cleanup()


@pytest.fixture(scope="session")
def database_url(postgres_server: str) -> str:
    """A fresh database for this session, migrated to head."""
    url = create_database(postgres_server, f"meter_test_{os.getpid()}_{secrets.token_hex(3)}")
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_demo_upstream(tmp_path_factory.mktemp("upstream"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def meter(database_url: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_meter(database_url, upstream.base_url, tmp_path_factory.mktemp("meter"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def admin(meter: Process) -> Admin:
    return Admin(meter.base_url)


@pytest.fixture
def tenant_key(admin: Admin) -> dict[str, Any]:
    """A new tenant with one key; `key` holds the secret."""
    tenant = admin.create_tenant(f"tenant-{secrets.token_hex(3)}")
    return admin.issue_key(tenant["id"], name="test")


@pytest.fixture(scope="session")
def ledger(database_url: str) -> Ledger:
    return Ledger(database_url)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")
