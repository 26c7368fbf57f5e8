"""Limits, budgets and prepaid credit, enforced by two meter processes sharing one Postgres."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.support import Admin, Ledger, Process, eventually, metric, retry_after_ends_the, scrape, start_meter

HOLD_TTL_S = "2"
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Hi"}],
}


@pytest.fixture(scope="module")
def meters(database_url: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    processes = [
        start_meter(database_url, upstream.base_url, tmp_path_factory.mktemp(f"m{i}"), METER_HOLD_TTL_S=HOLD_TTL_S)
        for i in range(2)
    ]
    yield processes
    for process in processes:
        process.stop()


def new_tenant(meters: list[Process], limits: dict[str, Any] | None = None) -> tuple[dict[str, Any], Admin]:
    """A tenant with one key, not used yet: every process reads it, limits included, at its first request."""
    admin = Admin(meters[0].base_url)
    key = admin.issue_key(admin.create_tenant(f"limited-{secrets.token_hex(3)}")["id"])
    if limits is not None:
        response = admin.request("PUT", f"/admin/tenants/{key['tenant_id']}/limits", json=limits)
        assert response.status_code == 200, response.text
    return key, admin


def headers(key: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"x-api-key": key["key"], "anthropic-version": "2023-06-01", **extra}


async def fire(
    meters: list[Process], key: dict[str, Any], count: int, body: dict[str, Any], **extra: str
) -> list[httpx.Response]:
    """`count` requests at once, alternating between the meter processes."""
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(meters[i % len(meters)].base_url + "/v1/messages", json=body, headers=headers(key, **extra))
                for i in range(count)
            )
        )


def remains_and_needed(message: str) -> tuple[Decimal, Decimal]:
    match = re.search(r"\$([0-9.]+) remains and this request may cost up to \$([0-9]+(?:\.[0-9]+)?)", message)
    assert match, message
    return Decimal(match.group(1)), Decimal(match.group(2))


def test_budget_holds_across_two_processes_under_200_concurrent_requests(meters: list[Process], ledger: Ledger) -> None:
    # Each request may cost (input estimate + 100 output tokens at $15/MTok) ~ $0.0016 and actually
    # costs 20 output tokens: a $0.05 budget fits some of 200, not all.
    key, admin = new_tenant(meters, {"budget_usd_per_month": "0.05"})
    sent = datetime.now(UTC)
    responses = asyncio.run(fire(meters, key, 200, BODY, **{"x-demo-output-tokens": "20"}))
    answered = datetime.now(UTC)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 200, {r.status_code for r in responses}
    assert ok and refused
    for response in refused:
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error"
        # Refused only without headroom: what remained was less than this request's worst case.
        remains, needed = remains_and_needed(error["message"])
        assert remains < needed
        assert retry_after_ends_the("month", int(response.headers["retry-after"]), sent, answered)
        assert_retry_advice(response.headers)
    for response in ok:
        ledger.row(response.headers["x-meter-request-id"])
    spent = sum(row["cost_usd"] for row in ledger.rows(tenant_id=key["tenant_id"]))
    assert Decimal(0) < spent <= Decimal("0.05")
    view = settled_view(admin, f"/admin/tenants/{key['tenant_id']}/limits")
    assert Decimal(view["this_month"]["cost_usd"]) == spent  # settled to the exact cost, row by row


def assert_retry_advice(refusal: Mapping[str, str]) -> None:
    """The SDKs wait out a retry-after of up to a minute; past that, meter tells them not to retry."""
    retry_after = int(refusal["retry-after"])
    assert refusal.get("x-should-retry") == ("false" if retry_after > 60 else None), refusal


def settled_view(admin: Admin, path: str) -> dict[str, Any]:
    """The limits view once no request holds a reservation any more."""

    def settled() -> dict[str, Any] | None:
        view: dict[str, Any] = admin.request("GET", path).json()
        return view if view["in_flight"] == 0 else None

    return eventually(settled, waiting_for=f"the holds of {path} to settle")


def test_requests_per_minute_across_two_processes(meters: list[Process]) -> None:
    key, _ = new_tenant(meters, {"requests_per_minute": 10})
    responses = asyncio.run(fire(meters, key, 30, BODY))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) in (10, 11), statuses  # a bucket refilling 1/6 request per second
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["anthropic-ratelimit-requests-limit"] == "10"
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", refused.headers["anthropic-ratelimit-requests-reset"])
    assert "x-should-retry" not in refused.headers


def test_concurrency_across_two_processes(meters: list[Process]) -> None:
    key, admin = new_tenant(meters, {"max_concurrent_requests": 3})
    slow = {"x-demo-output-tokens": "20", "x-demo-tokens-per-second": "20"}
    responses = asyncio.run(fire(meters, key, 10, {**BODY, "stream": True}, **slow))
    assert [r.status_code for r in responses].count(200) == 3
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in responses if r.status_code != 200)
    # Once they are settled, the slots are free again.
    settled_view(admin, f"/admin/tenants/{key['tenant_id']}/limits")
    again = asyncio.run(fire(meters, key, 3, BODY))
    assert [r.status_code for r in again] == [200, 200, 200]


def test_killed_process_holds_expire(
    database_url: str, upstream: Process, meters: list[Process], tmp_path: Path
) -> None:
    victim = start_meter(database_url, upstream.base_url, tmp_path, METER_HOLD_TTL_S=HOLD_TTL_S)
    key, _ = new_tenant([meters[0]], {"max_concurrent_requests": 2})
    try:
        slow = headers(key, **{"x-demo-output-tokens": "200", "x-demo-tokens-per-second": "20"})
        streams = [
            httpx.stream(
                "POST",
                victim.base_url + "/v1/messages",
                json={**BODY, "stream": True, "max_tokens": 300},
                headers=slow,
                timeout=30,
            )
            for _ in range(2)
        ]
        for stream in streams:
            assert stream.__enter__().status_code == 200
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.wait(10)
    finally:
        victim.stop()
    blocked = httpx.post(meters[1].base_url + "/v1/messages", json=BODY, headers=headers(key))
    assert blocked.status_code == 429  # the dead process's holds still count, for now
    eventually(
        lambda: httpx.post(meters[1].base_url + "/v1/messages", json=BODY, headers=headers(key)).status_code == 200,
        15,
        "the killed process's holds to expire",
    )


def test_streams_settle_exactly_against_token_limits(meters: list[Process], ledger: Ledger) -> None:
    key, admin = new_tenant(meters, {"tokens_per_month": 1_000_000, "tokens_per_day": 1_000_000})
    extra = {"x-demo-output-tokens": "33", "x-demo-cache-read": "100", "x-demo-cache-write-1h": "7"}
    responses = asyncio.run(fire(meters, key, 20, {**BODY, "stream": True}, **extra))
    assert all(r.status_code == 200 for r in responses)
    assert all(r.headers["anthropic-ratelimit-tokens-limit"] == "1000000" for r in responses)
    rows = [ledger.row(r.headers["x-meter-request-id"]) for r in responses]
    used = sum(
        r["input_tokens"] + r["output_tokens"] + r["cache_creation_input_tokens"] + r["cache_read_input_tokens"]
        for r in rows
    )
    assert all(r["output_tokens"] == 33 and not r["partial"] for r in rows)
    view = settled_view(admin, f"/admin/tenants/{key['tenant_id']}/limits")
    assert view["this_month"]["tokens"] == view["today"]["tokens"] == used


def test_sdk_sees_rate_limit_error_with_retry_after(meters: list[Process]) -> None:
    key, _ = new_tenant(meters, {"requests_per_minute": 1})
    with anthropic.Anthropic(base_url=meters[0].base_url, api_key=key["key"], max_retries=0) as client:
        first = client.messages.with_raw_response.create(**BODY)
        assert first.headers["anthropic-ratelimit-requests-limit"] == "1"
        assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(**BODY)
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_daily_token_limit_says_do_not_retry(meters: list[Process]) -> None:
    key, _ = new_tenant(meters, {"tokens_per_day": 50})
    sent = datetime.now(UTC)
    with (
        anthropic.Anthropic(base_url=meters[1].base_url, api_key=key["key"], max_retries=2) as client,
        pytest.raises(anthropic.RateLimitError) as caught,
    ):
        client.messages.create(**BODY)  # 100 max_tokens alone exceed 50 tokens a day
    answered = datetime.now(UTC)
    response = caught.value.response
    assert retry_after_ends_the("day", int(response.headers["retry-after"]), sent, answered)
    assert_retry_advice(response.headers)  # do not retry, unless the day ends within a minute
    assert response.headers["anthropic-ratelimit-tokens-limit"] == "50"
    assert "daily token limit" in caught.value.message


def test_prepaid_credit_is_spent_exactly_and_refuses_when_low(meters: list[Process], ledger: Ledger) -> None:
    key, admin = new_tenant(meters)
    topped = admin.request(
        "POST", f"/admin/tenants/{key['tenant_id']}/credits", json={"amount_usd": "0.01", "note": "trial"}
    )
    assert topped.status_code == 200, topped.text
    assert topped.json()["balance_usd"] == "0.01"
    with anthropic.Anthropic(base_url=meters[1].base_url, api_key=key["key"], max_retries=0) as client:
        made = [client.messages.with_raw_response.create(**BODY).headers["x-meter-request-id"] for _ in range(3)]
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(**{**BODY, "max_tokens": 1000})  # may cost $0.015: more than is left
    assert "credit balance is too low" in caught.value.message
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    spent = sum(ledger.row(request_id)["cost_usd"] for request_id in made)
    balance = admin.request("GET", f"/admin/tenants/{key['tenant_id']}/balance").json()
    assert Decimal(balance["balance_usd"]) == Decimal("0.01") - spent and balance["prepaid"] is True

    # What the process's lease of the credit still holds goes back once it is idle.
    def returned() -> bool:
        held: str = admin.request("GET", f"/admin/tenants/{key['tenant_id']}/balance").json()["held_usd"]
        return held == "0.00"

    eventually(returned, waiting_for="the idle lease to give the credit back")


def test_unknown_model_is_refused_with_a_budget_and_unpriced_without(meters: list[Process], ledger: Ledger) -> None:
    model = f"claude-future-{secrets.token_hex(2)}"
    budgeted, admin = new_tenant(meters, {"budget_usd_per_day": "10"})
    refused = httpx.post(meters[0].base_url + "/v1/messages", json={**BODY, "model": model}, headers=headers(budgeted))
    assert refused.status_code == 400
    assert "has no price" in refused.json()["error"]["message"]

    free, _ = new_tenant(meters)
    unpriced = httpx.post(meters[0].base_url + "/v1/messages", json={**BODY, "model": model}, headers=headers(free))
    assert unpriced.status_code == 200
    assert ledger.row(unpriced.headers["x-meter-request-id"])["cost_usd"] is None
    assert 'meter_unpriced_requests_total{model="other"}' in scrape(meters[0].base_url)

    # A price from now on applies to requests that start after it, on every process.
    put = admin.request(
        "PUT", "/admin/prices", json={"prices": [{"model": model, "input_per_mtok": "2", "output_per_mtok": "8"}]}
    )
    assert put.status_code == 200, put.text

    def priced_on_the_other_process() -> dict[str, Any] | None:
        response = httpx.post(meters[1].base_url + "/v1/messages", json={**BODY, "model": model}, headers=headers(free))
        row = ledger.row(response.headers["x-meter-request-id"])
        return row if row["cost_usd"] is not None else None

    row = eventually(priced_on_the_other_process, waiting_for="the price to reach the other process")
    assert row["cost_usd"] == (row["input_tokens"] * 2 + row["output_tokens"] * 8) / Decimal(1_000_000)
    assert ledger.row(unpriced.headers["x-meter-request-id"])["cost_usd"] is None  # the past is not repriced
    listed = admin.request("GET", "/admin/prices").json()["data"]
    entry = next(p for p in listed if p["model"] == model)
    assert (entry["cache_write_5m_per_mtok"], entry["cache_write_1h_per_mtok"], entry["cache_read_per_mtok"]) == (
        "2.5",
        "4",
        "0.2",
    )
    past = admin.request(
        "PUT",
        "/admin/prices",
        json={
            "prices": [
                {
                    "model": model,
                    "input_per_mtok": "1",
                    "output_per_mtok": "1",
                    "effective_from": "2020-01-01T00:00:00Z",
                }
            ]
        },
    )
    assert past.status_code == 400


def test_limits_api_validates_and_key_limits_apply(meters: list[Process]) -> None:
    key, admin = new_tenant(meters)
    bad = admin.request("PUT", f"/admin/keys/{key['id']}/limits", json={"requests_per_minute": -1})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = admin.request("GET", "/admin/keys/key_nope/limits")
    assert missing.status_code == 404
    ok = admin.request(
        "PUT", f"/admin/keys/{key['id']}/limits", json={"requests_per_minute": 2, "budget_usd_per_month": 5}
    )
    assert ok.status_code == 200 and ok.json()["budget_usd_per_month"] == "5.00"
    assert admin.request("GET", f"/admin/keys/{key['id']}/limits").json()["requests_per_minute"] == 2
    statuses = [
        httpx.post(meters[0].base_url + "/v1/messages", json=BODY, headers=headers(key)).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_limited_requests_are_admitted_from_a_lease_without_a_round_trip_each(meters: list[Process]) -> None:
    key, _ = new_tenant(meters, {"requests_per_minute": 100_000, "budget_usd_per_month": "1000"})
    process = [meters[0]]
    base_url = process[0].base_url

    def counts() -> tuple[float, float, float, float, float]:
        """Round trips, requests, ledger rows written, lease and reservation round trips."""
        return (
            metric(base_url, "meter_db_round_trips_total"),
            metric(base_url, "meter_requests_total", endpoint="messages"),
            metric(base_url, "meter_ledger_rows_written_total"),
            metric(base_url, "meter_db_round_trips_total", purpose="lease"),
            metric(base_url, "meter_db_round_trips_total", purpose="reserve"),
        )

    before = counts()
    for _ in range(4):
        assert all(r.status_code == 200 for r in asyncio.run(fire(process, key, 100, BODY)))
    # The last ledger batch is part of the cost.
    eventually(lambda: counts()[2] - before[2] >= 400, waiting_for="the ledger rows of the 400 requests")
    trips, requests, _, leases, reserves = (now - was for now, was in zip(counts(), before, strict=True))
    assert requests == 400
    # Every request was limited (each took from the lease), but few went to Postgres to be admitted.
    assert 1 <= leases <= requests / 10, f"{leases} lease round trips for {requests} requests"
    assert reserves == 0
    assert trips / requests <= 0.25, f"{trips} round trips for {requests} requests"


def test_two_prices_for_one_model_and_moment_are_refused(meters: list[Process]) -> None:
    admin = Admin(meters[0].base_url)
    twice = {"model": "claude-twice", "input_per_mtok": "1", "output_per_mtok": "2"}
    response = admin.request("PUT", "/admin/prices", json={"prices": [twice, twice]})
    assert response.status_code == 400
    assert "same time" in response.json()["error"]["message"]


def test_models_calls_count_against_the_per_minute_request_limit(meters: list[Process]) -> None:
    key, _ = new_tenant(meters, {"requests_per_minute": 2})
    answers = [
        httpx.get(meters[i % 2].base_url + path, headers=headers(key), timeout=30)
        for i, path in enumerate(("/v1/models", "/v1/models/claude-sonnet-4-6", "/v1/models"))
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["type"] == "rate_limit_error"
