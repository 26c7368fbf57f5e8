"""The operator console over HTTP, as a browser without script uses it: every change lands through
the admin service functions (the admin API sees it, the audit log names `console`), the tenant's
keys work with the SDK, and the pages show what the ledger holds."""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import pytest

from meter import money
from tests.console_client import Console
from tests.support import Admin, Ledger, Process, eventually

SECRET = re.compile(r'id="secret" readonly value="(sk-meter-[^"]+)"')


@pytest.fixture
def console(meter: Process) -> Iterator[Console]:
    client = Console(meter.base_url)
    assert client.sign_in().status_code == 303
    yield client
    client.close()


def create_tenant(console: Console, name: str) -> str:
    answer = console.submit("/console/tenants", "/console/tenants", {"name": name})
    assert answer.status_code == 303, answer.text
    tenant_id = answer.headers["location"].split("/")[3].split("?")[0]
    assert tenant_id.startswith("ten_")
    return tenant_id


def issue(console: Console, tenant_id: str, **fields: str) -> str:
    page = f"/console/tenants/{tenant_id}"
    answer = console.submit(page, f"{page}/keys", {"name": "laptop", **fields})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    found = SECRET.search(answer.text)
    assert found, "the new secret is on the page that answers the form"
    return found.group(1)


def test_a_tenant_made_in_the_console_is_the_admin_apis_tenant_and_audited_as_console(
    console: Console, admin: Admin, meter: Process
) -> None:
    tenant_id = create_tenant(console, "Console Co")
    assert admin.request("GET", f"/admin/tenants/{tenant_id}").json()["name"] == "Console Co"
    secret = issue(console, tenant_id)
    # Shown once: the tenant's page never shows it again.
    assert secret not in console.get(f"/console/tenants/{tenant_id}").text
    with anthropic.Anthropic(base_url=meter.base_url, api_key=secret, max_retries=0) as client:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "hi"}])

    page = f"/console/tenants/{tenant_id}"
    saved = console.submit(page, f"{page}/limits", {"budget_usd_per_month": "12.50", "requests_per_minute": "600"})
    assert console.follow(saved).status_code == 200
    limits = admin.request("GET", f"/admin/tenants/{tenant_id}/limits").json()
    assert (limits["budget_usd_per_month"], limits["requests_per_minute"]) == ("12.50", 600)
    assert limits["tokens_per_day"] is None  # an empty field is no limit

    topped = console.submit(page, f"{page}/credits", {"amount_usd": "25", "note": "invoice 7"})
    assert "Credit added" in console.follow(topped).text
    assert admin.request("GET", f"/admin/tenants/{tenant_id}/balance").json()["balance_usd"] == "25.00"

    entries = admin.request("GET", "/admin/audit", params={"subject_id": tenant_id}).json()["data"]
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("console", "tenant.create"),
        ("console", "limits.set"),
        ("console", "credit.add"),
    ]
    audit_page = console.get("/console/audit", params={"subject": tenant_id}).text
    assert audit_page.count('"badge actor">console<') == 3 and "credit.add" in audit_page


def test_suspend_rotate_and_revoke_take_effect_for_the_tenant(console: Console, meter: Process) -> None:
    tenant_id = create_tenant(console, f"lifecycle-{secrets.token_hex(3)}")
    secret = issue(console, tenant_id)
    page = f"/console/tenants/{tenant_id}"
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }
    with anthropic.Anthropic(base_url=meter.base_url, api_key=secret, max_retries=0) as client:
        assert console.follow(console.submit(page, f"{page}/status", {"status": "suspended"})).status_code == 200
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.create(**body)
        console.follow(console.submit(page, f"{page}/status", {"status": "active"}))
        client.messages.create(**body)

    key_id = re.findall(r"/console/keys/(key_[0-9a-f]+)/rotate", console.get(page).text)[0]
    rotated = console.submit(page, f"/console/keys/{key_id}/rotate", {"grace_period_s": "0"})
    new_secret = SECRET.search(rotated.text)
    assert rotated.status_code == 200 and new_secret and new_secret.group(1) != secret
    with (
        anthropic.Anthropic(base_url=meter.base_url, api_key=secret, max_retries=0) as old,
        pytest.raises(anthropic.AuthenticationError),
    ):
        old.messages.create(**body)
    with anthropic.Anthropic(base_url=meter.base_url, api_key=new_secret.group(1), max_retries=0) as client:
        client.messages.create(**body)
        assert "Key revoked" in console.follow(console.submit(page, f"/console/keys/{key_id}/revoke", {})).text
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(**body)


def test_usage_statement_and_csv_show_the_ledger(console: Console, meter: Process, ledger: Ledger) -> None:
    tenant_id = create_tenant(console, f"usage-{secrets.token_hex(3)}")
    secret = issue(console, tenant_id)
    with anthropic.Anthropic(base_url=meter.base_url, api_key=secret, max_retries=0) as client:
        for model in ("claude-sonnet-4-6", "claude-sonnet-4-6", "claude-haiku-4-5"):
            client.messages.create(model=model, max_tokens=20, messages=[{"role": "user", "content": "count"}])
    rows = eventually(lambda: r if len(r := ledger.rows(tenant_id=tenant_id)) == 3 else None, waiting_for="3 rows")
    total = sum((row["cost_usd"] for row in rows), Decimal(0))

    def usage_csv() -> list[dict[str, str]] | None:
        answer = console.get("/console/usage.csv", params={"tenant": tenant_id})
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        found = list(csv.DictReader(io.StringIO(answer.text)))
        return found if sum(int(r["requests"]) for r in found) == 3 else None

    found = eventually(usage_csv, waiting_for="the rollups of 3 requests")
    assert {r["model"]: int(r["requests"]) for r in found} == {"claude-sonnet-4-6": 2, "claude-haiku-4-5": 1}
    assert sum(Decimal(r["cost_usd"]) for r in found) == total
    usage = console.get("/console/usage", params={"tenant": tenant_id, "measure": "tokens"}).text
    assert usage.count("<rect x=") == 2  # one bar of each model today
    assert "claude-haiku-4-5" in usage

    month = rows[0]["started_at"].strftime("%Y-%m")
    statement = console.get(f"/console/tenants/{tenant_id}/statement", params={"month": month}).text
    assert "claude-sonnet-4-6" in statement and "claude-haiku-4-5" in statement
    shown = re.search(r"<tfoot>.*?<strong>\$([0-9,.]+)</strong>", statement, re.S)
    assert shown and shown.group(1).replace(",", "") == money.usd(total)
    lines = list(
        csv.DictReader(io.StringIO(console.get(f"/console/tenants/{tenant_id}/statement.csv?month={month}").text))
    )
    assert (lines[-1]["model"], lines[-1]["cost_usd"]) == ("TOTAL", money.usd(total))


def test_the_tenants_page_searches_sorts_and_shows_spend_budget_and_credit(console: Console, admin: Admin) -> None:
    tag = secrets.token_hex(3)
    big, small = create_tenant(console, f"zz-{tag}-big"), create_tenant(console, f"zz-{tag}-small")
    for tenant_id, budget, credit in ((big, "100", "50"), (small, "10", "5")):
        admin.request("PUT", f"/admin/tenants/{tenant_id}/limits", json={"budget_usd_per_month": budget})
        admin.request("POST", f"/admin/tenants/{tenant_id}/credits", json={"amount_usd": credit})
    page = console.get("/console/tenants", params={"q": tag, "sort": "credit", "order": "desc"}).text
    assert page.index(f"zz-{tag}-big") < page.index(f"zz-{tag}-small")
    assert "$50.00 left" in page and "of $100.00" in page
    page = console.get("/console/tenants", params={"q": tag, "sort": "credit", "order": "asc"}).text
    assert page.index(f"zz-{tag}-small") < page.index(f"zz-{tag}-big")
    # A search is text, not a pattern.
    assert "No tenant matches" in console.get("/console/tenants", params={"q": "%"}).text


def test_a_price_set_in_the_console_keeps_the_rest_of_the_models_price(console: Console, admin: Admin) -> None:
    # Sonnet 4.5 has long-context prices; the new price is its list price again, so no other test's
    # costs change.
    model = "claude-sonnet-4-5"
    before = {p["model"]: p for p in admin.request("GET", "/admin/prices").json()["data"]}[model]
    assert before["long_context"] is not None
    fields = {"model": model, "input_per_mtok": "3", "output_per_mtok": "15"}
    answer = console.submit("/console/prices", "/console/prices", fields)
    assert "Price saved" in console.follow(answer).text
    newest = [p for p in admin.request("GET", "/admin/prices").json()["data"] if p["model"] == model][-1]
    assert newest["effective_from"] > before["effective_from"]
    assert (newest["input_per_mtok"], newest["cache_read_per_mtok"], newest["verified"]) == ("3", "0.3", False)
    for kept in ("server_tool_fees", "multipliers", "long_context", "context_window", "max_output_tokens"):
        assert newest[kept] == before[kept]
    audit = admin.request("GET", "/admin/audit", params={"limit": 1000}).json()["data"]
    assert [e["actor"] for e in audit if e["action"] == "prices.set"][-1] == "console"


def test_a_keys_limits_and_a_tenants_name_are_edited_in_the_console(console: Console, admin: Admin) -> None:
    tenant_id = create_tenant(console, f"rename-{secrets.token_hex(3)}")
    issue(console, tenant_id)
    page = f"/console/tenants/{tenant_id}"
    key_id = re.findall(r'href="/console/keys/(key_[0-9a-f]+)"', console.get(page).text)[0]
    key_page = f"/console/keys/{key_id}"
    saved = console.submit(key_page, f"{key_page}/limits", {"tokens_per_day": "2,000,000", "form": "limits"})
    assert "Key limits saved" in console.follow(saved).text
    assert admin.request("GET", f"/admin/keys/{key_id}/limits").json()["tokens_per_day"] == 2_000_000
    # A refused form comes back as typed, with the reason.
    refused = console.submit(key_page, f"{key_page}/limits", {"tokens_per_day": "lots", "form": "limits"})
    assert refused.status_code == 400 and 'value="lots"' in refused.text and "Tokens per day" in refused.text
    assert admin.request("GET", f"/admin/keys/{key_id}/limits").json()["tokens_per_day"] == 2_000_000

    renamed = console.submit(page, f"{page}/name", {"name": "Renamed Co", "form": "rename"})
    assert "<h1>Renamed Co" in console.follow(renamed).text
    blank = console.submit(page, f"{page}/name", {"name": "   ", "form": "rename"})
    assert blank.status_code == 400 and "<strong>Not saved.</strong> Name:" in blank.text
    assert admin.request("GET", f"/admin/tenants/{tenant_id}").json()["name"] == "Renamed Co"
    actions = [
        (e["actor"], e["action"])
        for e in admin.request("GET", "/admin/audit", params={"limit": 1000}).json()["data"]
        if e["subject_id"] in (tenant_id, key_id)
    ]
    assert ("console", "limits.set") in actions and ("console", "tenant.update") in actions


def test_webhooks_and_their_deliveries_are_shown_without_their_secret(console: Console, admin: Admin) -> None:
    tenant_id = admin.create_tenant(f"hooked-{secrets.token_hex(2)}")["id"]
    # Nothing listens there: the delivery is attempted and fails, and the page shows that.
    created = admin.request(
        "POST",
        "/admin/webhooks",
        json={"url": "http://127.0.0.1:9/hooks", "event_types": ["key.expiring"], "tenant_id": tenant_id},
    ).json()
    expires = datetime.now(UTC) + timedelta(days=3)
    admin.issue_key(tenant_id, name="soon", expires_at=expires.isoformat())
    listing = console.get("/console/webhooks")
    assert listing.status_code == 200 and f"/console/webhooks/{created['id']}" in listing.text
    assert created["secret"] not in listing.text

    def attempted() -> str | None:
        page = console.get(f"/console/webhooks/{created['id']}").text
        return page if "key.expiring" in page and "Nothing delivered yet" not in page else None

    page = eventually(attempted, 30, "the key.expiring delivery to be attempted")
    delivery = admin.request("GET", f"/admin/webhooks/{created['id']}/deliveries").json()["data"][0]
    assert delivery["id"] in page and created["secret"] not in page
