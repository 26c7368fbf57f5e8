"""Shared fixtures: one real Postgres per test session (the server named by
METER_TEST_DATABASE_URL, else an embedded one), a demo upstream and a meter process on sockets."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from meter.db import migrate
from meter.db.engine import create_engine
from meter.db.models import usage_events
from tests.support import ADMIN_TOKEN, EmbeddedPostgres, Process, create_database, start_demo_upstream, start_meter


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


@dataclass
class Admin:
    """The operator API of one meter process."""

    base_url: str

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.base_url + path, headers=headers, timeout=30, **kwargs)

    def create_tenant(self, name: str = "acme") -> dict[str, Any]:
        response = self.request("POST", "/admin/tenants", json={"name": name})
        assert response.status_code == 201, response.text
        tenant: dict[str, Any] = response.json()
        return tenant

    def issue_key(self, tenant_id: str, **spec: Any) -> dict[str, Any]:
        response = self.request("POST", f"/admin/tenants/{tenant_id}/keys", json=spec)
        assert response.status_code == 201, response.text
        key: dict[str, Any] = response.json()
        return key


@pytest.fixture(scope="session")
def admin(meter: Process) -> Admin:
    return Admin(meter.base_url)


@pytest.fixture
def tenant_key(admin: Admin) -> dict[str, Any]:
    """A new tenant with one key; `key` holds the secret."""
    tenant = admin.create_tenant(f"tenant-{secrets.token_hex(3)}")
    return admin.issue_key(tenant["id"], name="test")


class Ledger:
    """Reads the ledger table directly, waiting for the batched writer to catch up."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        async def query() -> list[dict[str, Any]]:
            engine = create_engine(self.url, pool_size=1)
            try:
                statement = select(usage_events).order_by(usage_events.c.request_id)
                for column, value in where.items():
                    statement = statement.where(usage_events.c[column] == value)
                async with engine.connect() as conn:
                    return [dict(row) for row in (await conn.execute(statement)).mappings()]
            finally:
                await engine.dispose()

        return asyncio.run(query())

    def row(self, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.rows(request_id=request_id)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no ledger row for {request_id}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def ledger(database_url: str) -> Ledger:
    return Ledger(database_url)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")
