"""No ledger row is lost when meter is told to stop mid-stream or when Postgres restarts."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from meter.db import migrate
from tests.support import Admin, EmbeddedPostgres, Ledger, Process, create_database, eventually, metric, start_meter

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}


def tenant_headers(admin: Admin) -> dict[str, str]:
    key = admin.issue_key(admin.create_tenant(f"t-{secrets.token_hex(3)}")["id"])
    return {"x-api-key": key["key"], "anthropic-version": "2023-06-01"}


def test_sigterm_during_a_stream_finishes_it_and_loses_no_row(
    database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path
) -> None:
    meter = start_meter(database_url, upstream.base_url, tmp_path)
    try:
        headers = tenant_headers(Admin(meter.base_url))
        slow = {**headers, "x-demo-output-tokens": "30", "x-demo-tokens-per-second": "20"}
        quick_ids = [
            httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers).headers["x-meter-request-id"]
            for _ in range(5)
        ]
        with httpx.stream("POST", meter.base_url + "/v1/messages", json={**BODY, "stream": True}, headers=slow) as s:
            chunks = s.iter_bytes()
            first = next(chunks)
            meter.terminate()  # SIGTERM while the stream has ~1.5 s to go
            body = first + b"".join(chunks)
            stream_id = s.headers["x-meter-request-id"]
        assert meter.wait(30) == 0, meter.output()
    finally:
        meter.stop()
    assert b"message_stop" not in first  # the signal came mid-stream
    assert body.rstrip().endswith(b'data: {"type":"message_stop"}')
    # Written before the process exited: read at once, without waiting.
    (row,) = ledger.rows(request_id=stream_id)
    assert (row["output_tokens"], row["partial"], row["status"]) == (30, False, 200)
    recorded = {row["request_id"]: row["status"] for row in ledger.rows(tenant_id=row["tenant_id"])}
    assert all(recorded.get(request_id) == 200 for request_id in quick_ids), recorded


@contextmanager
def meter_on_own_postgres(
    upstream: Process, directory: Path, **env: str
) -> Iterator[tuple[Process, EmbeddedPostgres, str]]:
    """A meter process on a Postgres of its own, which the test may stop and start. Its data lives
    outside pytest's temporary root, which every pytest session on the machine makes private again
    (mode 0700), shutting out the server's own user in the middle of a test."""
    home = Path(tempfile.mkdtemp(prefix="meter-test-pg-"))
    postgres = EmbeddedPostgres(home / "pg")
    try:
        url = create_database(postgres.url(), "meter")
        migrate.upgrade(url)
        meter = start_meter(url, upstream.base_url, directory / "meter", **env)
        try:
            yield meter, postgres, url
        finally:
            meter.stop()
    finally:
        postgres.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def test_postgres_restart_during_traffic_loses_no_row(upstream: Process, tmp_path: Path) -> None:
    with meter_on_own_postgres(upstream, tmp_path) as (meter, postgres, url):
        traffic = run_traffic_across_outage(meter, postgres)
        # Everything buffered during the outage is written once Postgres is back.
        eventually(lambda: metric(meter.base_url, "meter_ledger_queue_depth") == 0, 30, "the ledger to drain")
        assert metric(meter.base_url, "meter_ledger_rows_dropped_total") == 0
        assert metric(meter.base_url, "meter_ledger_write_errors_total") > 0  # the outage did hit the writer
        meter.stop()  # it writes what it still holds, then the ledger is read
        recorded = {row["request_id"] for row in Ledger(url).rows()}
    assert not traffic.failures, f"refused: {traffic.failures}"
    assert traffic.served <= recorded, f"missing: {len(traffic.served - recorded)}"
    assert "ledger: dropped row" not in meter.output()  # the writer's words for a row Postgres rejected


@dataclass
class Traffic:
    """What the clients of run_traffic_across_outage saw, by request id (failures: by status)."""

    served: set[str] = field(default_factory=set)
    before: set[str] = field(default_factory=set)
    during: set[str] = field(default_factory=set)
    after: set[str] = field(default_factory=set)
    failures: list[int] = field(default_factory=list)


def run_traffic_across_outage(meter: Process, postgres: EmbeddedPostgres) -> Traffic:
    """Four clients send requests with a cached key before, while and after Postgres is down."""
    headers = tenant_headers(Admin(meter.base_url))
    seen = Traffic()
    phase = seen.before
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=meter.base_url, headers=headers, timeout=30) as http:
            while not stop.is_set():
                sent_in = phase
                response = http.post("/v1/messages", json=BODY)
                if response.status_code != 200:
                    seen.failures.append(response.status_code)
                    continue
                request_id = response.headers["x-meter-request-id"]
                seen.served.add(request_id)
                if phase is sent_in:  # sent and answered in one phase
                    sent_in.add(request_id)

    workers = [threading.Thread(target=client) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        eventually(lambda: len(seen.before) >= 20, 30, "requests before the outage")
        postgres.stop()
        phase = seen.during
        eventually(lambda: len(seen.during) >= 20, 30, "requests served while Postgres is down")
        postgres.start()
        phase = seen.after
        eventually(lambda: len(seen.after) >= 20, 30, "requests after Postgres is back")
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    return seen


@pytest.mark.parametrize("processes", [2])
def test_two_processes_migrating_at_once(postgres_server: str, processes: int, tmp_path: Path) -> None:
    """The advisory lock makes concurrent `meter db upgrade` safe."""
    import subprocess
    import sys

    url = create_database(postgres_server, f"meter_mig_{secrets.token_hex(3)}")
    runs = [
        subprocess.Popen([sys.executable, "-m", "meter", "db", "upgrade"], env={"METER_DATABASE_URL": url, "PATH": ""})
        for _ in range(processes)
    ]
    assert [run.wait(120) for run in runs] == [0] * processes
    migrate.check(url)


def test_a_revoked_key_is_not_served_from_cache_while_postgres_is_down(upstream: Process, tmp_path: Path) -> None:
    with meter_on_own_postgres(upstream, tmp_path) as (meter, postgres, _):
        admin = Admin(meter.base_url)
        kept, revoked = (admin.issue_key(admin.create_tenant(name)["id"]) for name in ("kept", "revoked"))
        for key in (kept, revoked):
            assert httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers_of(key)).status_code == 200
        assert admin.request("POST", f"/admin/keys/{revoked['id']}/revoke").status_code == 200
        postgres.stop()
        during = [
            httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers_of(key)).status_code
            for key in (kept, revoked)
        ]
        postgres.start()
    assert during == [200, 529]  # the unchanged key is served from cache; the revoked one never


def headers_of(key: dict[str, Any]) -> dict[str, str]:
    return {"x-api-key": key["key"], "anthropic-version": "2023-06-01"}
