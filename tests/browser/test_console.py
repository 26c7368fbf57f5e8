"""The operator console in a real browser: sign in, create a tenant, issue a key (its secret shown
once), set a budget and credit, see the usage of real SDK traffic through meter, download it, read
the statement, prices and audit log, and sign out. Every page is saved as a screenshot at laptop
and phone width (tests/artifacts/console/), and no page raises a script error or breaks the CSP."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import anthropic
from playwright.sync_api import Page, expect

from tests.support import ADMIN_TOKEN, Admin, Process, eventually

LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
TRAFFIC = [("claude-sonnet-4-6", 3), ("claude-haiku-4-5", 2), ("claude-opus-4-6", 1)]


def watch(page: Page) -> list[str]:
    """Script errors, console errors (a CSP violation is one) and stylesheets, scripts or images that
    failed to load, as they happen. A page itself may answer 4xx: the refusals are pages too."""
    problems: list[str] = []

    def console_error(message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    def response(answer: Any) -> None:
        if answer.request.resource_type != "document" and answer.status >= 400:
            problems.append(f"{answer.status} {answer.url}")

    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", console_error)
    page.on("response", response)
    return problems


def send_traffic(base_url: str, secret: str) -> None:
    with anthropic.Anthropic(base_url=base_url, api_key=secret, max_retries=0) as client:
        for model, times in TRAFFIC:
            for _ in range(times):
                client.messages.create(model=model, max_tokens=40, messages=[{"role": "user", "content": "Hello"}])


def seed_other_tenants(admin: Admin, base_url: str) -> None:
    """A few more tenants, with budgets, credit and traffic, so the tenants page has something to sort."""
    # The demo upstream's replies cost a fraction of a cent: small budgets and credit show the bars
    # (a budget is set after the traffic, which its worst-case reservations would not fit).
    for name, budget, credit in (("Globex", "0.002", None), ("Initech", None, "0.01"), ("Umbrella", "0.0011", None)):
        tenant = admin.create_tenant(name)
        if credit:
            admin.request("POST", f"/admin/tenants/{tenant['id']}/credits", json={"amount_usd": credit})
        send_traffic(base_url, admin.issue_key(tenant["id"], name="prod")["key"])
        if budget:
            admin.request("PUT", f"/admin/tenants/{tenant['id']}/limits", json={"budget_usd_per_month": budget})


def test_an_operator_runs_a_tenant_from_the_console(console_meter: Process, browser: Any, artifacts: Path) -> None:
    # Playwright's sync API runs an event loop on this thread: the test talks to meter over plain
    # HTTP (the admin API, the SDK), never through asyncio.run.
    base = console_meter.base_url
    admin = Admin(base)
    seed_other_tenants(admin, base)
    context = browser.new_context(viewport=LAPTOP, accept_downloads=True)
    page = context.new_page()
    problems = watch(page)

    def shot(name: str) -> None:
        page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)

    page.goto(base + "/console")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    shot("sign-in")
    page.get_by_label("Admin token").fill("not-the-token-not-the-token-not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not this meter's admin token")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/tenants$"))

    # A form post without the page's CSRF token is refused, session cookie or not.
    refused = context.request.post(base + "/console/tenants", form={"name": "Forged Inc"})
    assert refused.status == 403
    names = [tenant["name"] for tenant in admin.request("GET", "/admin/tenants").json()["data"]]
    assert "Globex" in names and "Forged Inc" not in names

    page.get_by_label("New tenant").fill("Acme Corp")
    page.get_by_role("button", name="Create tenant").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Acme Corp")
    expect(page.get_by_role("status")).to_contain_text("Tenant created")
    tenant_url = page.url.split("?")[0]
    tenant_id = tenant_url.rsplit("/", 1)[1]

    page.locator("#key-name").fill("laptop")
    page.get_by_role("button", name="Issue key").click()
    secret = page.get_by_label("New key secret").input_value()
    assert secret.startswith("sk-meter-")
    shot("key-issued")
    page.goto(tenant_url)
    assert secret not in page.content()  # shown once

    page.get_by_label("Budget per month (USD)").fill("5")
    page.get_by_role("button", name="Save limits").click()
    expect(page.get_by_role("status")).to_contain_text("Limits saved")
    expect(page.get_by_label("Budget per month (USD)")).to_have_value("5.00")
    page.get_by_label("Amount (USD)").fill("abc")
    page.get_by_role("button", name="Add credit").click()
    expect(page.get_by_role("alert")).to_contain_text("Amount (USD)")
    page.get_by_label("Amount (USD)").fill("20")
    page.get_by_label("Note").fill("invoice 42")
    page.get_by_role("button", name="Add credit").click()
    expect(page.get_by_role("status")).to_contain_text("Credit added")

    send_traffic(base, secret)
    requests = sum(times for _, times in TRAFFIC)

    def recorded() -> int:
        events = admin.request("GET", "/admin/usage/events", params={"tenant_id": tenant_id}).json()["data"]
        return len(events)

    eventually(lambda: recorded() == requests, waiting_for="the ledger rows")

    page.goto(tenant_url)
    shot("tenant")
    page.get_by_role("link", name="Limits").click()
    page.get_by_label("Tokens per day").fill("2,000,000")
    page.get_by_role("button", name="Save limits").click()
    expect(page.get_by_role("status")).to_contain_text("Key limits saved")
    expect(page.get_by_label("Tokens per day")).to_have_value("2000000")
    shot("key")
    page.goto(tenant_url)
    page.get_by_role("link", name="Usage", exact=True).last.click()
    expect(page).to_have_url(re.compile(rf"/console/usage\?tenant={tenant_id}$"))

    def usage_shown() -> bool:
        page.reload()
        return bool(page.locator("table.usage-table tbody tr").count() == len(TRAFFIC))

    eventually(usage_shown, waiting_for="the usage rollups of the traffic")
    expect(page.locator("svg.usage-chart rect")).to_have_count(len(TRAFFIC))
    for model, _ in TRAFFIC:
        expect(page.locator(".legend")).to_contain_text(model)
    shot("usage")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {row["model"]: int(row["requests"]) for row in rows} == dict(TRAFFIC)

    page.goto(tenant_url)
    page.get_by_role("link", name="Statement").click()
    for model, _ in TRAFFIC:
        expect(page.locator("table")).to_contain_text(model)
    shot("statement")

    page.get_by_role("link", name="Tenants", exact=True).first.click()
    expect(page.locator("table.tenants")).to_contain_text("Acme Corp")
    page.get_by_role("link", name="Spent this month").click()
    expect(page.locator("th[aria-sort]")).to_contain_text("Spent this month")
    shot("tenants")
    page.get_by_role("link", name="Prices").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Prices")
    shot("prices")
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("table.audit")).to_contain_text("credit.add")
    expect(page.locator("table.audit .badge.actor").first).to_have_text("console")
    shot("audit")

    # The keyboard reaches the page: the first Tab lands on the skip link.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"

    phone = browser.new_context(viewport=PHONE, storage_state=context.storage_state())
    small = phone.new_page()
    problems += watch(small)
    for name, path in (
        ("tenants", "/console/tenants"),
        ("tenant", f"/console/tenants/{tenant_id}"),
        ("usage", f"/console/usage?tenant={tenant_id}"),
    ):
        small.goto(base + path)
        # Nothing is wider than the phone: wide tables scroll inside their own box.
        assert small.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], name
        small.screenshot(path=str(artifacts / f"phone-{name}.png"), full_page=True)
    phone.close()

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    page.goto(base + "/console/tenants")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    assert not problems, problems
    context.close()
