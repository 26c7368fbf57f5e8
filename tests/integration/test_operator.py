"""The operator's side: tenant and key lifecycle, usage and statements, the audit log."""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import anthropic
import httpx
import pytest

from tests.support import Admin, Ledger, Process, eventually, start_meter

BODY: Any = {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]}
# Longer than any test runs.
NEVER_S = 3600


@pytest.fixture(scope="module")
def other_meter(database_url: str, upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A second meter process on the same database, whose key cache never expires within a test:
    a key change reaches it by notification or not at all."""
    process = start_meter(
        database_url, upstream.base_url, tmp_path_factory.mktemp("other"), METER_KEY_CACHE_TTL_S=str(NEVER_S)
    )
    yield process
    process.stop()


def call(base_url: str, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        base_url + "/v1/messages",
        json={**BODY, **body},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    )


def refusal(base_url: str, key: str) -> httpx.Response | None:
    """The answer to a call with `key`, if meter refused it."""
    response = call(base_url, key)
    return None if response.status_code == 200 else response


def test_tenant_lifecycle(admin: Admin, meter: Process) -> None:
    names = [f"co-{secrets.token_hex(3)}" for _ in range(3)]
    made = [admin.create_tenant(name) for name in names]
    key = admin.issue_key(made[0]["id"])

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"after": cursor} if cursor else {})}
        page = admin.request("GET", "/admin/tenants", params=params).json()
        seen += [tenant["id"] for tenant in page["data"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert [tenant["id"] for tenant in made] == [t for t in seen if t in {m["id"] for m in made}]
    assert seen == sorted(seen)

    tenant_id = made[0]["id"]
    renamed = admin.request("PATCH", f"/admin/tenants/{tenant_id}", json={"name": "Renamed Co"}).json()
    assert renamed["name"] == "Renamed Co"
    assert admin.request("GET", f"/admin/tenants/{tenant_id}").json()["name"] == "Renamed Co"
    assert admin.request("GET", "/admin/tenants/ten_missing").status_code == 404

    assert call(meter.base_url, key["key"]).status_code == 200
    admin.request("PATCH", f"/admin/tenants/{tenant_id}", json={"status": "suspended"})
    with (
        anthropic.Anthropic(base_url=meter.base_url, api_key=key["key"], max_retries=0) as client,
        pytest.raises(anthropic.PermissionDeniedError),
    ):
        client.messages.create(**BODY)
    suspended = admin.request("GET", "/admin/tenants", params={"status": "suspended", "limit": 1000}).json()
    assert tenant_id in {tenant["id"] for tenant in suspended["data"]}
    admin.request("PATCH", f"/admin/tenants/{tenant_id}", json={"status": "active"})
    assert call(meter.base_url, key["key"]).status_code == 200
    bad = admin.request("PATCH", f"/admin/tenants/{tenant_id}", json={"status": "deleted"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_key_listing_and_last_use(admin: Admin, meter: Process, ledger: Ledger) -> None:
    tenant = admin.create_tenant("keys-co")
    first = admin.issue_key(tenant["id"], name="laptop")
    second = admin.issue_key(tenant["id"], name="server", allowed_models=["claude-haiku-4-5"])
    request_id = call(meter.base_url, first["key"]).headers["x-meter-request-id"]
    ledger.row(request_id)
    listed = admin.request("GET", f"/admin/tenants/{tenant['id']}/keys").json()["data"]
    assert [k["id"] for k in listed] == [first["id"], second["id"]]
    for key in listed:
        assert "key" not in key and "key_hash" not in key
        assert set(key) >= {"prefix", "name", "status", "created_at", "last_used_at", "expires_at"}
    assert listed[0]["last_used_at"] is not None and listed[1]["last_used_at"] is None
    assert first["key"] not in str(listed) and second["key"] not in str(listed)


def test_allowed_models_and_models_listing(admin: Admin, meter: Process) -> None:
    tenant = admin.create_tenant("models-co")
    key = admin.issue_key(tenant["id"], allowed_models=["claude-haiku-4-5", "claude-sonnet-4-6"])
    with anthropic.Anthropic(base_url=meter.base_url, api_key=key["key"], max_retries=0) as client:
        client.messages.create(**{**BODY, "model": "claude-haiku-4-5"})
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.create(**{**BODY, "model": "claude-opus-4-7"})
        assert sorted(model.id for model in client.models.list()) == ["claude-haiku-4-5", "claude-sonnet-4-6"]
        assert client.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5"
        with pytest.raises(anthropic.NotFoundError):
            client.models.retrieve("claude-opus-4-7")
    everyone = admin.issue_key(tenant["id"])
    with anthropic.Anthropic(base_url=meter.base_url, api_key=everyone["key"], max_retries=0) as client:
        assert "claude-opus-4-7" in {model.id for model in client.models.list()}


def test_expired_key_is_refused(admin: Admin, meter: Process) -> None:
    tenant = admin.create_tenant("expiring-co")
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    key = admin.issue_key(tenant["id"], expires_at=soon)
    assert call(meter.base_url, key["key"]).status_code == 200
    refused = eventually(lambda: refusal(meter.base_url, key["key"]), waiting_for="the key to expire")
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]
    past = admin.request("POST", f"/admin/tenants/{tenant['id']}/keys", json={"expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 400


def test_rotation_keeps_the_old_secret_for_the_grace_period(admin: Admin, meter: Process, other_meter: Process) -> None:
    tenant = admin.create_tenant("rotating-co")
    old = admin.issue_key(tenant["id"])
    assert call(other_meter.base_url, old["key"]).status_code == 200  # cached on the other process
    rotated = admin.request("POST", f"/admin/keys/{old['id']}/rotate", json={"grace_period_s": 2}).json()
    assert rotated["id"] == old["id"] and rotated["key"] != old["key"]
    for base in (meter.base_url, other_meter.base_url):
        assert call(base, rotated["key"]).status_code == 200
        assert call(base, old["key"]).status_code == 200
    for base in (meter.base_url, other_meter.base_url):
        refused = eventually(partial(refusal, base, old["key"]), waiting_for="the grace period to end")
        assert refused.status_code == 401
        assert call(base, rotated["key"]).status_code == 200
    now = admin.request("POST", f"/admin/keys/{old['id']}/rotate", json={"grace_period_s": 0}).json()
    assert call(other_meter.base_url, rotated["key"]).status_code == 401
    assert call(other_meter.base_url, now["key"]).status_code == 200


@pytest.mark.parametrize("change", ["revoke", "suspend"])
def test_changes_reach_another_process_by_notification(admin: Admin, other_meter: Process, change: str) -> None:
    tenant = admin.create_tenant(f"{change}-co")
    key = admin.issue_key(tenant["id"])
    assert call(other_meter.base_url, key["key"]).status_code == 200  # now cached there
    if change == "revoke":
        assert admin.request("POST", f"/admin/keys/{key['id']}/revoke").status_code == 200
    else:
        admin.request("PATCH", f"/admin/tenants/{tenant['id']}", json={"status": "suspended"})
    # Its cache would keep the key for an hour: only the notification can make it refuse.
    refused = eventually(lambda: refusal(other_meter.base_url, key["key"]), waiting_for="the other process to refuse")
    assert refused.status_code == (401 if change == "revoke" else 403)
    assert call(other_meter.base_url, key["key"]).status_code == refused.status_code


def test_usage_by_day_model_and_key_equals_the_ledger(admin: Admin, meter: Process, ledger: Ledger) -> None:
    tenant = admin.create_tenant("usage-co")
    keys = [admin.issue_key(tenant["id"]) for _ in range(2)]
    models = ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7"]

    async def traffic() -> list[str]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        meter.base_url + "/v1/messages",
                        json={**BODY, "model": models[i % 3], "stream": i % 2 == 0},
                        headers={
                            "x-api-key": keys[i % 2]["key"],
                            "anthropic-version": "2023-06-01",
                            "x-demo-output-tokens": str(5 + i),
                            "x-demo-cache-read": str(i * 10),
                        },
                    )
                    for i in range(60)
                )
            )
        return [r.headers["x-meter-request-id"] for r in responses]

    for request_id in asyncio.run(traffic()):
        ledger.row(request_id)
    rows = ledger.rows(tenant_id=tenant["id"])
    for group_by, column in (("day", None), ("model", "model"), ("key", "key_id")):
        report = admin.request("GET", f"/admin/tenants/{tenant['id']}/usage", params={"group_by": group_by}).json()
        expected: dict[str, dict[str, Any]] = {}
        for row in rows:
            group = str(row["started_at"].astimezone(UTC).date()) if column is None else row[column]
            totals = expected.setdefault(group, {"requests": 0, "output_tokens": 0, "cache": 0, "cost": Decimal(0)})
            totals["requests"] += 1
            totals["output_tokens"] += row["output_tokens"]
            totals["cache"] += row["cache_read_input_tokens"]
            totals["cost"] += row["cost_usd"]
        got = {
            line["group"]: {
                "requests": line["requests"],
                "output_tokens": line["output_tokens"],
                "cache": line["cache_read_input_tokens"],
                "cost": Decimal(line["cost_usd"]),
            }
            for line in report["data"]
        }
        assert got == expected, group_by
    empty = admin.request(
        "GET", f"/admin/tenants/{tenant['id']}/usage", params={"from": "2020-01-01", "to": "2020-02-01"}
    ).json()
    assert empty["data"] == []


def test_statement_total_equals_the_ledger_to_the_last_digit(admin: Admin, meter: Process, ledger: Ledger) -> None:
    tenant = admin.create_tenant("billed-co")
    key = admin.issue_key(tenant["id"])
    models = ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-3-5-haiku-20241022"]

    async def traffic() -> list[str]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        meter.base_url + "/v1/messages",
                        json={**BODY, "model": models[i % 3], "messages": [{"role": "user", "content": "x" * i}]},
                        headers={
                            "x-api-key": key["key"],
                            "anthropic-version": "2023-06-01",
                            "x-demo-output-tokens": str(1 + i % 17),
                            "x-demo-cache-write-5m": str(i % 7),
                            "x-demo-cache-write-1h": str(i % 5),
                            "x-demo-cache-read": str(i % 11),
                        },
                    )
                    for i in range(300)
                )
            )
        return [r.headers["x-meter-request-id"] for r in responses]

    for request_id in asyncio.run(traffic()):
        ledger.row(request_id)
    month = datetime.now(UTC).strftime("%Y-%m")
    ledger_total = sum(row["cost_usd"] for row in ledger.rows(tenant_id=tenant["id"]))
    statement = admin.request("GET", f"/admin/tenants/{tenant['id']}/statement", params={"month": month}).json()
    assert Decimal(statement["total_usd"]) == ledger_total
    assert {line["model"] for line in statement["lines"]} == set(models)
    for line in statement["lines"]:
        priced = (
            line["input_tokens"] * Decimal(line["input_per_mtok"])
            + line["cache_write_5m_tokens"] * Decimal(line["cache_write_5m_per_mtok"])
            + line["cache_write_1h_tokens"] * Decimal(line["cache_write_1h_per_mtok"])
            + line["cache_read_tokens"] * Decimal(line["cache_read_per_mtok"])
            + line["output_tokens"] * Decimal(line["output_per_mtok"])
        ) / 1_000_000
        # tokens x unit prices x the multiplier of how they ran, exactly the rows' costs
        assert Decimal(line["cost_usd"]) == priced * Decimal(line["multiplier"])

    response = admin.request(
        "GET", f"/admin/tenants/{tenant['id']}/statement", params={"month": month, "format": "csv"}
    )
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert table[-1]["model"] == "TOTAL" and {line["item"] for line in table[:-1]} == {"tokens"}
    assert Decimal(table[-1]["cost_usd"]) == ledger_total
    assert sum(Decimal(line["cost_usd"]) for line in table[:-1]) == ledger_total
    bad = admin.request("GET", f"/admin/tenants/{tenant['id']}/statement", params={"month": "2026-13"})
    assert bad.status_code == 400


def test_audit_log_records_who_changed_what(admin: Admin) -> None:
    tenant = admin.create_tenant("audited-co")
    key = admin.issue_key(tenant["id"], name="k")
    admin.request("PUT", f"/admin/tenants/{tenant['id']}/limits", json={"requests_per_minute": 5})
    admin.request("POST", f"/admin/keys/{key['id']}/revoke")
    entries = admin.request("GET", "/admin/audit", params={"limit": 1000}).json()["data"]
    mine = [e for e in entries if e["subject_id"] in (tenant["id"], key["id"])]
    assert [e["action"] for e in mine] == ["tenant.create", "key.issue", "limits.set", "key.revoke"]
    assert all(e["actor"].startswith("admin-token:") for e in mine)
    assert mine[2]["details"]["requests_per_minute"] == 5
