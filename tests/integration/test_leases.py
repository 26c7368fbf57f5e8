"""Headroom leases across two meter processes (meter/proxy/leases.py): what leases hold plus what is
settled never exceeds a limit, the last of a budget is still granted, operator changes take leases
back, and a killed process's lease lapses."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.test_limits import BODY, HOLD_TTL_S, fire, headers, new_tenant, remains_and_needed
from tests.support import Ledger, Process, eventually, sql, start_meter

CHEAP = {"x-demo-output-tokens": "20"}
T = TypeVar("T")


@pytest.fixture(scope="module")
def meters(database_url: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    processes = [
        start_meter(database_url, upstream.base_url, tmp_path_factory.mktemp(f"l{i}"), METER_HOLD_TTL_S=HOLD_TTL_S)
        for i in range(2)
    ]
    yield processes
    for process in processes:
        process.stop()


def state(database_url: str, subject: str) -> dict[str, Any]:
    """A subject's limits row, and what the holds (leases and reservations) on it add up to."""
    rows = sql(
        database_url,
        """SELECT l.month_usd, l.month_usd_held, l.day_tokens, l.day_tokens_held, l.in_flight,
                  COALESCE((SELECT sum(usd) FROM holds WHERE $1 = ANY(subjects)), 0) AS holds_usd,
                  COALESCE((SELECT sum(tokens) FROM holds WHERE $1 = ANY(subjects)), 0) AS holds_tokens
           FROM limits l WHERE subject_id = $1""",
        subject,
    )
    return rows[0]


def sampled_while(database_url: str, subject: str, work: Callable[[], T]) -> tuple[T, list[dict[str, Any]]]:
    """What `work` returns, and the subject's `state` sampled over and over while it ran."""
    samples: list[dict[str, Any]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(state(database_url, subject))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return work(), samples
    finally:
        done.set()
        sampler.join()


def test_leases_and_settled_usage_never_exceed_the_limits(
    meters: list[Process], ledger: Ledger, database_url: str
) -> None:
    budget, daily_tokens = Decimal("0.05"), 40_000
    key, admin = new_tenant(meters, {"budget_usd_per_month": str(budget), "tokens_per_day": daily_tokens})
    tenant = key["tenant_id"]
    statuses, samples = sampled_while(
        database_url,
        tenant,
        lambda: [r.status_code for _ in range(3) for r in asyncio.run(fire(meters, key, 100, BODY, **CHEAP))],
    )
    assert set(statuses) == {200, 429} and statuses.count(200) > 10
    assert len(samples) > 5 and any(s["month_usd_held"] > 0 for s in samples), "no lease was ever seen"
    for s in samples:
        assert s["month_usd"] + s["month_usd_held"] <= budget, s
        assert s["day_tokens"] + s["day_tokens_held"] <= daily_tokens, s
        # The limits row's held amounts are exactly what the holds on it add up to.
        assert (s["month_usd_held"], s["day_tokens_held"]) == (s["holds_usd"], s["holds_tokens"]), s

    def idle() -> dict[str, Any] | None:
        now = state(database_url, tenant)
        return now if now["month_usd_held"] == 0 and now["day_tokens_held"] == 0 and now["in_flight"] == 0 else None

    settled = eventually(idle, waiting_for="every lease to be given back once idle")
    served = eventually(
        lambda: [r for r in [ledger.rows(tenant_id=tenant, status=200)] if len(r) == statuses.count(200)]
    )
    spent = sum(row["cost_usd"] for row in served[0])
    assert 0 < spent <= budget and settled["month_usd"] == spent
    assert settled["day_tokens"] == sum(
        r["input_tokens"] + r["output_tokens"] + r["cache_creation_input_tokens"] + r["cache_read_input_tokens"]
        for r in served[0]
    )
    assert admin.request("GET", f"/admin/tenants/{tenant}/limits").status_code == 200


def test_the_last_of_a_budget_is_granted_whichever_process_leased_it(
    meters: list[Process], ledger: Ledger, database_url: str
) -> None:
    """Requests one at a time, alternating processes, until both refuse: each refusal must be right
    counting everything, including what the other process's lease held (it is reclaimed)."""
    budget = Decimal("0.01")
    key, _ = new_tenant(meters, {"budget_usd_per_month": str(budget)})
    refused: dict[int, str] = {}
    made = 0
    with httpx.Client(timeout=30) as client:
        while len(refused) < 2 and made < 500:
            which = made % 2
            response = client.post(meters[which].base_url + "/v1/messages", json=BODY, headers=headers(key, **CHEAP))
            made += 1
            if response.status_code == 429:
                refused[which] = response.json()["error"]["message"]
            else:
                assert response.status_code == 200, response.text
                refused.clear()
    assert len(refused) == 2, f"still served after {made} requests"

    def settled() -> dict[str, Any] | None:
        # Every served request's row written and settled: until then its use is held, not spent.
        now = state(database_url, key["tenant_id"])
        return now if now["month_usd_held"] == 0 and now["in_flight"] == 0 else None

    spent = eventually(settled, waiting_for="every row settled and every lease given back")["month_usd"]
    assert spent == sum(row["cost_usd"] for row in ledger.rows(tenant_id=key["tenant_id"]))
    for message in refused.values():
        remains, needed = remains_and_needed(message)
        assert budget - spent < needed, f"refused with ${budget - spent} left for a request of ${needed}: {refused}"
        assert remains == budget - spent, message  # nothing stranded in the other process's lease
    assert spent <= budget


def test_an_operator_change_takes_back_every_lease(meters: list[Process], database_url: str) -> None:
    key, admin = new_tenant(meters, {"budget_usd_per_month": "10"})
    tenant = key["tenant_id"]
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                for meter in meters:
                    url = meter.base_url + "/v1/messages"
                    statuses.append(client.post(url, json=BODY, headers=headers(key, **CHEAP)).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        eventually(lambda: statuses.count(200) >= 10, waiting_for="traffic on both processes")
        assert state(database_url, tenant)["month_usd_held"] > Decimal("0.01")  # leases of far more than a call
        # Lowered below what is spent plus one call: a lease that kept serving would overspend it.
        spent = state(database_url, tenant)["month_usd"]
        lowered = admin.request(
            "PUT", f"/admin/tenants/{tenant}/limits", json={"budget_usd_per_month": str(spent + Decimal("0.001"))}
        )
        assert lowered.status_code == 200, lowered.text
        seen = len(statuses)
        eventually(lambda: statuses[seen:].count(429) >= 4, waiting_for="both processes to refuse")
        assert statuses[-4:] == [429] * 4
    finally:
        stop.set()
        worker.join()
    assert eventually(lambda: state(database_url, tenant)["month_usd_held"] == 0, waiting_for="leases given back")


def test_a_top_up_is_spendable_at_once_on_every_process(meters: list[Process]) -> None:
    key, admin = new_tenant(meters)
    tenant = key["tenant_id"]
    credits = f"/admin/tenants/{tenant}/credits"
    assert admin.request("POST", credits, json={"amount_usd": "0.002", "note": "trial"}).status_code == 200
    with httpx.Client(timeout=30) as client:

        def send(meter: Process) -> int:
            return client.post(meter.base_url + "/v1/messages", json=BODY, headers=headers(key, **CHEAP)).status_code

        assert eventually(lambda: send(meters[0]) == 400 and send(meters[1]) == 400, waiting_for="credit used up")
        assert admin.request("POST", credits, json={"amount_usd": "1", "note": "top-up"}).status_code == 200
        assert [send(meter) for meter in meters] == [200, 200]


def test_a_killed_process_lease_lapses(
    database_url: str, upstream: Process, meters: list[Process], tmp_path: Path
) -> None:
    victim = start_meter(database_url, upstream.base_url, tmp_path, METER_HOLD_TTL_S=HOLD_TTL_S)
    key, _ = new_tenant([meters[0]], {"budget_usd_per_month": "1"})
    tenant = key["tenant_id"]
    try:
        served = asyncio.run(fire([victim], key, 10, BODY, **CHEAP))
        assert [r.status_code for r in served] == [200] * 10
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.wait(10)
    finally:
        victim.stop()
    # It died holding a lease: nobody gives it back, it lapses with its hold.
    assert state(database_url, tenant)["month_usd_held"] > 0
    eventually(lambda: state(database_url, tenant)["month_usd_held"] == 0, 15, "the dead process's lease to lapse")
    assert httpx.post(meters[1].base_url + "/v1/messages", json=BODY, headers=headers(key)).status_code == 200


def test_a_lease_whose_hold_lapsed_is_not_spent(database_url: str, upstream: Process, tmp_path: Path) -> None:
    """A process that could not renew its lease's hold in time (here: stopped for longer than the
    TTL, while another process releases the lapsed hold) never spends that lease again: its next
    request takes a new lease from what Postgres says."""
    victim, other = (
        start_meter(database_url, upstream.base_url, tmp_path / name, METER_HOLD_TTL_S="3") for name in ("a", "b")
    )
    key, _ = new_tenant([victim], {"budget_usd_per_month": "1"})
    leases_of = "SELECT id FROM holds WHERE lease AND $1 = ANY(subjects)"
    url = victim.base_url + "/v1/messages"
    slow = headers(key, **{"x-demo-output-tokens": "300", "x-demo-tokens-per-second": "20"})
    try:
        assert httpx.post(url, json=BODY, headers=headers(key, **CHEAP)).status_code == 200
        (first,) = [row["id"] for row in sql(database_url, leases_of, key["tenant_id"])]
        # A stream keeps the lease in use, so it is not simply dropped as idle.
        stream = httpx.stream("POST", url, json={**BODY, "stream": True, "max_tokens": 400}, headers=slow, timeout=60)
        assert stream.__enter__().status_code == 200
        os.kill(victim.process.pid, signal.SIGSTOP)
        try:
            eventually(
                lambda: not sql(database_url, leases_of, key["tenant_id"]), 20, "the stopped process's lease to lapse"
            )
        finally:
            os.kill(victim.process.pid, signal.SIGCONT)
        assert httpx.post(url, json=BODY, headers=headers(key, **CHEAP), timeout=30).status_code == 200
        assert [row["id"] for row in sql(database_url, leases_of, key["tenant_id"])] not in ([], [first])
        stream.__exit__(None, None, None)
    finally:
        victim.stop()
        other.stop()
