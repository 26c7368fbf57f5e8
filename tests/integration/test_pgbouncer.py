"""meter behind a real PgBouncer in transaction mode: `meter db upgrade`, two meter processes, the
operator's CLI and admin API all reach Postgres through it (METER_DATABASE_TRANSACTION_POOLING), and
only LISTEN goes to Postgres directly (METER_LISTEN_DATABASE_URL). Limits hold across the processes,
the ledger is written in batches, a revocation reaches both processes at once, and PgBouncer
multiplexes meter's many client connections onto its few server connections. A pooler in the way
without those settings stops meter at start with a line that names them."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from meter.db import migrate
from tests.integration.test_batches_files import billed_rows, ended, requests, tenant
from tests.integration.test_leases import CHEAP, sampled_while, state
from tests.integration.test_limits import BODY, fire, headers, new_tenant
from tests.pgbouncer import PgBouncer, Pool, binary
from tests.support import (
    ADMIN_TOKEN,
    KEY_PEPPER,
    Ledger,
    Process,
    create_database,
    eventually,
    metric,
    sql,
    start_meter,
)

POOL_SIZE = 4


@dataclass
class Bounced:
    bouncer: PgBouncer
    direct_url: str  # the database, reached directly (LISTEN, and the test's own checks)

    @property
    def url(self) -> str:
        return self.bouncer.url("meter")

    def env(self) -> dict[str, str]:
        return {"METER_DATABASE_TRANSACTION_POOLING": "true", "METER_LISTEN_DATABASE_URL": self.direct_url}


def meter_command(bounced: Bounced, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meter", *args],
        env={**os.environ, "METER_DATABASE_URL": bounced.url, "METER_KEY_PEPPER": KEY_PEPPER, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def bounced(postgres_server: str) -> Iterator[Bounced]:
    binary()
    name = f"meter_bouncer_{os.getpid()}_{secrets.token_hex(3)}"
    direct = create_database(postgres_server, name)
    bouncer = PgBouncer(postgres_server, {"meter": Pool(name, "transaction", POOL_SIZE)})
    try:
        yield Bounced(bouncer, direct)
    finally:
        bouncer.stop()


@pytest.fixture(scope="module")
def meters(bounced: Bounced, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    # The schema is made through PgBouncer too: every migration runs in one transaction.
    upgraded = meter_command(bounced, "db", "upgrade", **bounced.env())
    assert upgraded.returncode == 0, upgraded.stderr
    processes: list[Process] = []
    try:
        for i in range(2):
            directory = tmp_path_factory.mktemp(f"bounced{i}")
            env = {**bounced.env(), "METER_BATCH_POLL_S": "0.2"}
            processes.append(start_meter(bounced.url, upstream.base_url, directory, **env))
        yield processes
    finally:
        for process in processes:
            process.stop()


def test_migrations_reach_head_and_match_the_models_through_pgbouncer(bounced: Bounced, meters: list[Process]) -> None:
    (row,) = sql(bounced.direct_url, "SELECT version_num FROM alembic_version")
    assert {row["version_num"]} == migrate.current_heads(bounced.direct_url)
    checked = meter_command(bounced, "db", "check", **bounced.env())
    assert checked.returncode == 0, checked.stderr


def test_limits_ledger_and_admin_api_through_pgbouncer(meters: list[Process], bounced: Bounced) -> None:
    budget, daily_tokens = Decimal("0.04"), 30_000
    key, admin = new_tenant(meters, {"budget_usd_per_month": str(budget), "tokens_per_day": daily_tokens})
    tenant = key["tenant_id"]
    statuses, samples = sampled_while(
        bounced.direct_url,
        tenant,
        lambda: [r.status_code for _ in range(3) for r in asyncio.run(fire(meters, key, 80, BODY, **CHEAP))],
    )
    assert set(statuses) == {200, 429} and statuses.count(200) > 10, statuses
    assert any(s["month_usd_held"] > 0 for s in samples), "no lease was ever seen"
    for s in samples:
        assert s["month_usd"] + s["month_usd_held"] <= budget, s
        assert s["day_tokens"] + s["day_tokens_held"] <= daily_tokens, s

    ledger = Ledger(bounced.direct_url)
    served = eventually(
        lambda: [rows for rows in [ledger.rows(tenant_id=tenant, status=200)] if len(rows) == statuses.count(200)],
        waiting_for="every served request's ledger row",
    )[0]
    spent = sum(row["cost_usd"] for row in served)
    settled = eventually(
        lambda: (s := state(bounced.direct_url, tenant))["month_usd_held"] == 0 and s["in_flight"] == 0 and s,
        waiting_for="the leases to be given back",
    )
    assert 0 < spent <= budget and settled["month_usd"] == spent
    # The ledger wrote its rows in batches of several rows per statement, through PgBouncer.
    rows_written = sum(metric(m.base_url, "meter_ledger_rows_written_total") for m in meters)
    batches = sum(metric(m.base_url, "meter_db_round_trips_total", purpose="ledger_batch") for m in meters)
    assert rows_written >= len(statuses) > batches > 0, (rows_written, batches)
    # The admin API reads through PgBouncer too: the statement's total is the ledger's sum.
    month = served[0]["started_at"].strftime("%Y-%m")
    statement = admin.request("GET", f"/admin/tenants/{tenant}/statement", params={"month": month})
    assert statement.status_code == 200, statement.text
    assert Decimal(statement.json()["total_usd"]) == spent

    # Many client connections, at most POOL_SIZE server connections to the database.
    clients = [c for c in bounced.bouncer.show("SHOW CLIENTS") if c["database"] == "meter"]
    servers = [s for s in bounced.bouncer.show("SHOW SERVERS") if s["database"] == "meter"]
    assert len(clients) > POOL_SIZE and 0 < len(servers) <= POOL_SIZE, (len(clients), len(servers))


def test_a_revocation_by_the_cli_through_pgbouncer_reaches_both_processes(
    meters: list[Process], bounced: Bounced
) -> None:
    key, _ = new_tenant(meters, {"requests_per_minute": 1000})
    with httpx.Client(timeout=30) as client:

        def status(meter: Process) -> int:
            return client.post(meter.base_url + "/v1/messages", json=BODY, headers=headers(key, **CHEAP)).status_code

        assert [status(meter) for meter in meters] == [200, 200]  # both processes hold the key in cache
        revoked = meter_command(bounced, "keys", "revoke", key["id"], "--format", "json", **bounced.env())
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout)["status"] == "revoked"
        eventually(lambda: [status(meter) for meter in meters] == [401, 401], 1.0, "the revocation on both")


def test_a_pooler_in_the_way_is_named_at_start(bounced: Bounced, upstream: Process, tmp_path: Path) -> None:
    def serve(**env: str) -> str:
        done = meter_command(
            bounced,
            "serve",
            "--port",
            "1",  # never reached: meter must stop before it listens
            METER_UPSTREAM_URL=upstream.base_url,
            METER_UPSTREAM_API_KEY="sk-ant-unused",
            METER_ADMIN_TOKEN=ADMIN_TOKEN,
            METER_DATA_DIR=str(tmp_path),
            **env,
        )
        assert done.returncode != 0, done.stdout
        return done.stderr

    # PgBouncer refuses the hot engine's session setting: meter says which settings it needs.
    assert "set METER_DATABASE_TRANSACTION_POOLING=true" in serve()
    # LISTEN through the transaction pool would hear nothing: meter refuses to start deaf.
    deaf = serve(METER_DATABASE_TRANSACTION_POOLING="true", METER_LISTEN_DATABASE_URL=bounced.url)
    assert "did not arrive on METER_LISTEN_DATABASE_URL" in deaf, deaf
    # Pooling without a session URL is a configuration error before any connection.
    assert "needs METER_LISTEN_DATABASE_URL" in serve(METER_DATABASE_TRANSACTION_POOLING="true")


def test_a_message_batch_is_billed_once_through_pgbouncer(meters: list[Process], bounced: Bounced) -> None:
    client, key = tenant(meters[0], budget_usd_per_month="5")
    with client:
        batch = client.messages.batches.create(requests=requests(3), extra_headers={"x-demo-batch-seconds": "0.5"})
        assert ended(client, batch.id).request_counts.succeeded == 3
    rows = billed_rows(Ledger(bounced.direct_url), key["tenant_id"], 3)
    assert sorted(row["upstream_request_id"] for row in rows) == [f"{batch.id}/r{i}" for i in range(3)]
    # Both processes poll the batch: its results are still billed exactly once.
    eventually(lambda: state(bounced.direct_url, key["tenant_id"])["month_usd_held"] == 0, waiting_for="settled")
    assert len(Ledger(bounced.direct_url).rows(tenant_id=key["tenant_id"], endpoint="batches")) == 3
