"""The console under hostile use: its pages need a session, its forms a CSRF token from this
session and a post from its own origin, its cookie cannot be forged and is HttpOnly and
SameSite=Strict, failed sign-ins are throttled, the admin token never shows in a page, and bad
input is a page with a reason, never a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.console_client import Console, csrf_of
from tests.support import ADMIN_TOKEN, Admin, Process

PAGES = ["/console/tenants", "/console/usage", "/console/prices", "/console/audit"]


@pytest.fixture
def console(meter: Process) -> Iterator[Console]:
    client = Console(meter.base_url)
    assert client.sign_in().status_code == 303
    yield client
    client.close()


def tenant_names(admin: Admin) -> list[str]:
    return [tenant["name"] for tenant in admin.request("GET", "/admin/tenants", params={"limit": 1000}).json()["data"]]


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_session(meter: Process, path: str) -> None:
    answer = httpx.get(meter.base_url + path)
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/sign-in")
    # The admin token is the admin API's, not the console's: it does not open a page either.
    answer = httpx.get(meter.base_url + path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 303


def test_a_post_without_this_sessions_csrf_token_changes_nothing(
    console: Console, meter: Process, admin: Admin
) -> None:
    token = csrf_of(console.get("/console/tenants").text)
    for fields in ({"name": "no-token"}, {"name": "wrong-token", "csrf": "x" * 43}, {"name": "empty", "csrf": ""}):
        answer = console.http.post("/console/tenants", data=fields)
        assert answer.status_code == 403 and "nothing was changed" in answer.text
    # Another session's token is no better.
    other = Console(meter.base_url)
    other.sign_in()
    answer = other.http.post("/console/tenants", data={"name": "other-session", "csrf": token})
    assert answer.status_code == 403
    other.close()
    # Nor is the right token from another site.
    for header in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}, {"origin": "null"}):
        answer = console.http.post("/console/tenants", data={"name": "cross-site", "csrf": token}, headers=header)
        assert answer.status_code == 403, header
    names = tenant_names(admin)
    assert not {"no-token", "wrong-token", "empty", "other-session", "cross-site"} & set(names)
    assert console.http.post("/console/tenants", data={"name": "with-token", "csrf": token}).status_code == 303


def test_a_post_without_a_session_is_refused(meter: Process, admin: Admin) -> None:
    for path in ("/console/tenants", "/console/sign-out", "/console/prices"):
        answer = httpx.post(meter.base_url + path, data={"name": "anonymous", "csrf": "x"})
        assert answer.status_code == 403, path
    assert "anonymous" not in tenant_names(admin)


def test_the_session_cookie_is_httponly_strict_and_cannot_be_forged(meter: Process) -> None:
    client = Console(meter.base_url)
    answer = client.sign_in()
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    signed = client.http.cookies["meter_console"]
    assert ADMIN_TOKEN not in signed
    assert ADMIN_TOKEN not in base64.urlsafe_b64decode(signed.split(".")[0] + "==").decode()
    assert client.get("/console/tenants").status_code == 200
    # An anonymous session, re-signed by nobody, with signed_in flipped: refused.
    anonymous = httpx.get(meter.base_url + "/console/sign-in").cookies["meter_console"]
    payload = json.loads(base64.urlsafe_b64decode(anonymous.split(".")[0] + "=="))
    forged = base64.urlsafe_b64encode(json.dumps({**payload, "signed_in": True}).encode()).rstrip(b"=").decode()
    for value in (forged + "." + anonymous.split(".")[1], anonymous, "garbage", signed + "x"):
        answer = httpx.get(meter.base_url + "/console/tenants", cookies={"meter_console": value})
        assert answer.status_code == 303, value
    client.close()


def test_signing_out_ends_the_session(meter: Process) -> None:
    client = Console(meter.base_url)
    client.sign_in()
    answer = client.submit("/console/tenants", "/console/sign-out", {})
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/sign-in")
    assert client.get("/console/tenants").status_code == 303
    client.close()


def test_failed_sign_ins_are_throttled_per_address(guarded: Process) -> None:
    """The guarded meter allows 3 failures a minute per address (METER_AUTH_FAILURES_PER_MINUTE)."""
    client = Console(guarded.base_url)
    statuses = [client.sign_in("wrong-" + "x" * 40).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    # Even the right token waits: a guesser cannot tell.
    answer = client.sign_in()
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
    assert ADMIN_TOKEN not in answer.text
    client.close()


def test_no_page_shows_the_admin_token(console: Console, admin: Admin) -> None:
    tenant = admin.create_tenant("token-check")
    for path in [*PAGES, f"/console/tenants/{tenant['id']}", f"/console/tenants/{tenant['id']}/statement"]:
        answer = console.get(path)
        assert answer.status_code == 200, path
        assert ADMIN_TOKEN not in answer.text and ADMIN_TOKEN not in str(answer.url)
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    ("action", "fields", "message"),
    [
        ("limits", {"requests_per_minute": "many"}, "Requests per minute: must be a whole number"),
        ("limits", {"tokens_per_day": "-5"}, "Tokens per day: expected `int` &gt;= 0"),
        ("limits", {"budget_usd_per_month": "1e400"}, "Budget per month (USD)"),
        ("limits", {"budget_usd_per_day": "NaN"}, "Budget per day (USD)"),
        ("credits", {"amount_usd": "0"}, "Amount (USD): must not be zero"),
        ("credits", {"amount_usd": ""}, "Amount (USD): give an amount"),
        ("credits", {"amount_usd": "5", "note": "nul\x00byte"}, "Note"),
        ("keys", {"expires_at": "2001-01-01T00:00"}, "Expires: must be in the future"),
        ("keys", {"expires_at": "tomorrow"}, "Expires: must be a date and time"),
        ("status", {"status": "deleted"}, "Status"),
    ],
)
def test_bad_input_is_a_page_that_says_why(
    console: Console, admin: Admin, action: str, fields: dict[str, str], message: str
) -> None:
    tenant = admin.create_tenant("bad-input")
    page = f"/console/tenants/{tenant['id']}"
    answer = console.submit(page, f"{page}/{action}", fields)
    assert answer.status_code == 400, answer.text[-2000:]
    assert 'role="alert"' in answer.text and message in answer.text, answer.text[-3000:]
    assert admin.request("GET", "/admin/audit", params={"subject_id": tenant["id"]}).json()["data"][1:] == []


@pytest.mark.parametrize(
    "path",
    [
        "/console/tenants?sort=secret",
        "/console/tenants?page=0",
        "/console/tenants?q=%00",
        "/console/tenants/ten_nope",
        "/console/tenants/ten_nope/statement",
        "/console/tenants/ten_nope/statement?month=2026-13",
        "/console/usage?from=2026-12-01&to=2026-01-01",
        "/console/usage?from=1900-01-01&to=2026-01-01",
        "/console/usage?from=yesterday",
        "/console/usage?to=0001-01-05",
        "/console/usage?to=9999-12-31",
        "/console/usage.csv?from=0001-01-01&to=0001-01-02",
        "/console/usage.csv?tenant=ten_nope",
        "/console/audit?before=%00",
    ],
)
def test_bad_queries_are_a_page_never_a_500(console: Console, path: str) -> None:
    answer = console.get(path)
    assert 400 <= answer.status_code < 500, (path, answer.status_code)
    assert "Traceback" not in answer.text


def test_an_unknown_key_or_tenant_in_a_form_is_a_404_page(console: Console) -> None:
    token = csrf_of(console.get("/console/tenants").text)
    for action in ("/console/keys/key_nope/revoke", "/console/keys/nope/rotate", "/console/tenants/ten_nope/limits"):
        answer = console.http.post(action, data={"csrf": token, "grace_period_s": "0"})
        assert answer.status_code == 404, (action, answer.status_code)
        assert answer.headers["content-type"].startswith("text/html")
