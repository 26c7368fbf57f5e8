"""No ledger row is lost when meter is told to stop mid-stream or when Postgres restarts."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from meter.db import migrate
from tests.support import Admin, EmbeddedPostgres, Ledger, Process, create_database, start_meter

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
    assert body.rstrip().endswith(b'data: {"type":"message_stop"}')
    row = ledger.row(stream_id, timeout_s=1)  # written before the process exited: no waiting
    assert (row["output_tokens"], row["partial"], row["status"]) == (30, False, 200)
    for request_id in quick_ids:
        assert ledger.row(request_id, timeout_s=1)["status"] == 200


@contextmanager
def meter_on_own_postgres(upstream: Process, directory: Path) -> Iterator[tuple[Process, EmbeddedPostgres, str]]:
    """A meter process on a Postgres of its own, which the test may stop and start."""
    postgres = EmbeddedPostgres(directory / "pg")
    try:
        url = create_database(postgres.url(), "meter")
        migrate.upgrade(url)
        meter = start_meter(url, upstream.base_url, directory / "meter")
        try:
            yield meter, postgres, url
        finally:
            meter.stop()
    finally:
        postgres.cleanup()


def test_postgres_restart_during_traffic_loses_no_row(upstream: Process, tmp_path: Path) -> None:
    with meter_on_own_postgres(upstream, tmp_path) as (meter, postgres, url):
        served = run_traffic_across_outage(meter, postgres)
        meter.stop()  # it writes what it still holds, then the ledger is read
        recorded = {row["request_id"] for row in Ledger(url).rows()}
    assert served["ok"] and served["ok"] <= recorded, f"missing: {len(served['ok'] - recorded)}"
    assert served["during_outage"], "requests with a known key should be served while Postgres is down"
    assert "ledger rows dropped" not in meter.output()


def run_traffic_across_outage(meter: Process, postgres: EmbeddedPostgres) -> dict[str, Any]:
    headers = tenant_headers(Admin(meter.base_url))
    ok: set[str] = set()
    during: set[str] = set()
    outage = threading.Event()
    stop = threading.Event()
    failures: list[int] = []

    def traffic() -> None:
        with httpx.Client(base_url=meter.base_url, headers=headers, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/v1/messages", json=BODY)
                if response.status_code == 200:
                    ok.add(response.headers["x-meter-request-id"])
                    if outage.is_set():
                        during.add(response.headers["x-meter-request-id"])
                else:
                    failures.append(response.status_code)

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        postgres.stop()
        outage.set()
        time.sleep(2.0)
        outage.clear()
        postgres.start()
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    # Wait for the writer to drain what it buffered during the outage.
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and "meter_ledger_queue_depth 0.0" not in httpx.get(meter.base_url + "/metrics").text
    ):
        time.sleep(0.2)
    return {"ok": ok, "during_outage": during, "failures": failures}


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
