"""meter killed, stopped or cut off from Postgres mid-traffic: every call answered 200 has its
ledger row once meter is back, and a call that never finished is billed once, partial, at its
estimate, with its hold settled."""

from __future__ import annotations

import os
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.faults.traffic import BODY, LIMITS, SlowStream, Traffic, tenant_headers
from tests.integration.test_durability import meter_on_own_postgres
from tests.support import Admin, Ledger, Process, eventually, metric, start_meter


def all_rows_in(ledger: Ledger, request_ids: set[str]) -> dict[str, dict[str, Any]] | None:
    rows = {row["request_id"]: row for row in ledger.rows()}
    return rows if request_ids <= rows.keys() else None


def spool_files(data_dir: Path) -> list[str]:
    return sorted(path.name for path in (data_dir / "spool").iterdir())


def test_kill_9_under_load_loses_no_answered_row_and_bills_the_unfinished_once(
    database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path
) -> None:
    data_dir = tmp_path / "meter"
    meter = start_meter(database_url, upstream.base_url, data_dir)
    try:
        tenant_id, headers = tenant_headers(Admin(meter.base_url), LIMITS)
        slow = SlowStream(meter.base_url, headers)
        traffic = Traffic(meter.base_url, headers).start()
        try:
            eventually(lambda: len(traffic.answered) >= 60, 60, "calls answered before the kill")
            meter.kill()
        finally:
            traffic.stop()
        slow.join()
    finally:
        meter.stop()
    assert b"message_stop" not in slow.received  # it was cut off mid-stream
    answered = set(traffic.answered)
    restarted = start_meter(database_url, upstream.base_url, data_dir)
    try:
        rows = eventually(lambda: all_rows_in(ledger, answered | {slow.request_id}), 30, "every row after recovery")
        assert all(rows[request_id]["status"] == 200 for request_id in answered)
        cut = rows[slow.request_id]
        # Billed for what it most likely read, flagged as such: never 0 tokens and $0.
        assert (cut["partial"], cut["error_type"]) == (True, "interrupted")
        assert cut["input_tokens"] > 0 and cut["cost_usd"] > Decimal(0)
        # Its hold, and that of every other call the dead process recorded, settled by the replay
        # with the row, long before holds expire on their own (METER_HOLD_TTL_S, 60 s). Only a call
        # killed while its reservation was on the wire has no row; its hold lapses, as it should.
        settled = "SELECT count(*) FROM holds h JOIN usage_events e ON h.id = 'hold_' || e.request_id"
        assert ledger.scalar(settled) == 0
        left = "SELECT count(*) FROM holds WHERE :tenant = ANY(subjects)"
        assert ledger.scalar(left, tenant=tenant_id) <= traffic.clients
        spent = ledger.scalar("SELECT month_usd FROM limits WHERE subject_id = :tenant", tenant=tenant_id)
        billed = ledger.scalar("SELECT sum(cost_usd) FROM usage_events WHERE tenant_id = :tenant", tenant=tenant_id)
        assert spent == billed  # each row counted against the budget exactly once
        assert metric(restarted.base_url, "meter_spool_replayed_rows_total", kind="unfinished") >= 1
        # The dead spool is gone once its rows are in; only the new process's own remains.
        eventually(lambda: len(spool_files(data_dir)) == 2, 15, "the dead spool removed")
    finally:
        restarted.stop()
    assert len(ledger.rows(request_id=slow.request_id)) == 1


def test_kill_9_during_a_postgres_outage_loses_no_answered_row(upstream: Process, tmp_path: Path) -> None:
    with meter_on_own_postgres(upstream, tmp_path) as (meter, postgres, url):
        _, headers = tenant_headers(Admin(meter.base_url))
        assert httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers).status_code == 200
        postgres.stop()
        traffic = Traffic(meter.base_url, headers).start()
        try:  # the key is cached: served while Postgres is down, rows in memory and the spool only
            eventually(lambda: len(traffic.answered) >= 30, 60, "calls answered during the outage")
            meter.kill()
        finally:
            traffic.stop()
        postgres.start()
        restarted = start_meter(url, upstream.base_url, tmp_path / "meter")
        try:
            eventually(lambda: all_rows_in(Ledger(url), traffic.answered), 30, "every row after recovery")
        finally:
            restarted.stop()


def test_sigterm_during_a_postgres_outage_keeps_what_it_could_not_write(upstream: Process, tmp_path: Path) -> None:
    with meter_on_own_postgres(upstream, tmp_path, METER_SHUTDOWN_GRACE_S="1") as (meter, postgres, url):
        _, headers = tenant_headers(Admin(meter.base_url))
        assert httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers).status_code == 200
        postgres.stop()  # the key is cached now
        served = [httpx.post(meter.base_url + "/v1/messages", json=BODY, headers=headers) for _ in range(10)]
        assert [reply.status_code for reply in served] == [200] * 10
        meter.terminate()
        assert meter.wait(60) == 0, meter.output()  # gave up on Postgres after the grace period...
        assert "stay in" in meter.output()  # ...and said the rows stay in the spool
        postgres.start()
        restarted = start_meter(url, upstream.base_url, tmp_path / "meter")
        try:
            answered = {reply.headers["x-meter-request-id"] for reply in served}
            eventually(lambda: all_rows_in(Ledger(url), answered), 30, "the rows of the outage")
        finally:
            restarted.stop()


def test_a_stream_cancelled_by_shutdown_is_billed_for_what_it_saw(
    database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path
) -> None:
    meter = start_meter(database_url, upstream.base_url, tmp_path, METER_SHUTDOWN_GRACE_S="1")
    try:
        _, headers = tenant_headers(Admin(meter.base_url))
        slow = SlowStream(meter.base_url, headers)
        meter.terminate()  # the stream has ~20 s to go; the grace period is 1 s
        slow.join()
        assert meter.wait(60) == 0, meter.output()
    finally:
        meter.stop()
    (row,) = ledger.rows(request_id=slow.request_id)  # written before the process exited
    assert (row["status"], row["partial"], row["error_type"]) == (200, True, "cancelled")
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["cost_usd"] > Decimal(0)


def test_a_killed_worker_is_replayed_while_meter_serves_on(
    database_url: str, upstream: Process, ledger: Ledger, tmp_path: Path
) -> None:
    meter = start_meter(database_url, upstream.base_url, tmp_path, "--workers", "2")
    try:
        _, headers = tenant_headers(Admin(meter.base_url))
        traffic = Traffic(meter.base_url, headers, clients=6).start()
        try:
            eventually(lambda: len(traffic.answered) >= 60, 60, "calls answered by both workers")
            victim = workers(meter.process.pid)[0]
            os.kill(victim, signal.SIGKILL)
            served = len(traffic.answered)
            eventually(lambda: len(traffic.answered) >= served + 60, 60, "calls answered after the kill")
        finally:
            traffic.stop()
        # No restart of meter: a sibling (or the worker started in the dead one's place) replays it.
        eventually(lambda: all_rows_in(ledger, traffic.answered), 30, "every row of the killed worker")
        eventually(lambda: not list((tmp_path / "spool").glob(f"{victim}-*")), 15, "the dead worker's spool gone")
    finally:
        meter.stop()


def workers(pid: int) -> list[int]:
    """The worker processes of `meter serve --workers N`: its children spawned by multiprocessing."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat, cmdline = (proc / "stat").read_text(), (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid and b"spawn_main" in cmdline:
            found.append(int(proc.name))
    return found
