"""A tenant reads its own usage with its own key: Anthropic's usage and cost reports equal the
ledger, in the documented field names, read even by a client written for Anthropic's reports
(meter's own reconciliation client); another tenant's usage is never in them; and
`/v1/meter/limits` shows the caller's limits and headroom."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from meter.reconcile.upstream import fetch_upstream
from tests.support import Admin, Ledger, Process, upstream_requests

USAGE = "/v1/organizations/usage_report/messages"
COST = "/v1/organizations/cost_report"
# Anthropic's documented fields of a usage report result and of a cost report result.
USAGE_FIELDS = {
    "uncached_input_tokens",
    "cache_creation",
    "cache_read_input_tokens",
    "output_tokens",
    "server_tool_use",
    "api_key_id",
    "workspace_id",
    "model",
    "service_tier",
    "context_window",
    "inference_geo",
    "speed",
}
COST_FIELDS = {
    "currency",
    "amount",
    "workspace_id",
    "description",
    "cost_type",
    "context_window",
    "model",
    "service_tier",
    "token_type",
}
HI: Any = [{"role": "user", "content": "Hello there"}]


def headers(key: dict[str, Any]) -> dict[str, str]:
    return {"x-api-key": key["key"], "anthropic-version": "2023-06-01"}


def today() -> dict[str, str]:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"starting_at": start.isoformat(), "ending_at": (start + timedelta(days=1)).isoformat()}


def get(meter: Process, key: dict[str, Any], path: str, **params: Any) -> httpx.Response:
    return httpx.get(meter.base_url + path, params=params, headers=headers(key), timeout=30)


def use(meter: Process, key: dict[str, Any], **demo: str) -> str:
    """One call through the SDK (shaped by x-demo-* headers); its ledger request id."""
    client = anthropic.Anthropic(base_url=meter.base_url, api_key=key["key"], max_retries=0)
    extra = {f"x-demo-{name.replace('_', '-')}": value for name, value in demo.items()}
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=HI, extra_headers=extra
    )
    return raw.headers["x-meter-request-id"]


@pytest.fixture(scope="module")
def two_tenants(admin: Admin, meter: Process, ledger: Ledger) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tenant A with two keys and varied usage, tenant B with a little; every row written."""
    tenant_a = admin.create_tenant(f"reader-{secrets.token_hex(3)}")["id"]
    keys_a = [admin.issue_key(tenant_a, name=name) for name in ("one", "two")]
    key_b = admin.issue_key(admin.create_tenant(f"other-{secrets.token_hex(3)}")["id"])
    ids = [
        use(meter, keys_a[0], output_tokens="30"),
        use(meter, keys_a[0], output_tokens="7", cache_read="100", cache_write_5m="20", cache_write_1h="40"),
        use(meter, keys_a[1], output_tokens="11", web_search="2"),
        use(meter, keys_a[1], output_tokens="5", service_tier="batch"),
        use(meter, key_b, output_tokens="45"),
    ]
    for request_id in ids:
        ledger.row(request_id)
    return keys_a, key_b


def ledger_sums(rows: list[dict[str, Any]]) -> Counter[str]:
    sums: Counter[str] = Counter()
    for row in rows:
        if row["endpoint"] != "messages":
            continue
        sums["uncached_input_tokens"] += row["input_tokens"]
        sums["output_tokens"] += row["output_tokens"]
        sums["cache_read_input_tokens"] += row["cache_read_input_tokens"]
        sums["ephemeral_5m_input_tokens"] += row["cache_creation_5m_input_tokens"]
        sums["ephemeral_1h_input_tokens"] += row["cache_creation_1h_input_tokens"]
        sums["web_search_requests"] += (row["server_tool_use"] or {}).get("web_search_requests", 0)
    return sums


def report_sums(results: list[dict[str, Any]]) -> Counter[str]:
    sums: Counter[str] = Counter()
    for result in results:
        for name in ("uncached_input_tokens", "output_tokens", "cache_read_input_tokens"):
            sums[name] += result[name]
        for name, count in result["cache_creation"].items():
            sums[name] += count
        sums["web_search_requests"] += result["server_tool_use"]["web_search_requests"]
    return sums


def test_usage_report_equals_the_ledger_by_key_and_model(
    meter: Process, ledger: Ledger, two_tenants: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    keys_a, _ = two_tenants
    response = get(meter, keys_a[0], USAGE, **today(), **{"group_by[]": ["api_key_id", "model"]})
    assert response.status_code == 200, response.text
    report = response.json()
    assert set(report) == {"data", "has_more", "next_page"} and report["has_more"] is False
    (bucket,) = report["data"]
    assert set(bucket) == {"starting_at", "ending_at", "results"}
    for result in bucket["results"]:
        assert set(result) == USAGE_FIELDS
        assert set(result["cache_creation"]) == {"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}
        assert result["service_tier"] is None and result["workspace_id"] is None  # not grouped by
    rows = ledger.rows(tenant_id=keys_a[0]["tenant_id"])
    for key in keys_a:
        mine = [r for r in bucket["results"] if r["api_key_id"] == key["id"]]
        assert report_sums(mine) == ledger_sums([r for r in rows if r["key_id"] == key["id"]])
        assert report_sums(mine)["output_tokens"] > 0
    models = {r["response_model"] or r["model"] for r in rows if r["endpoint"] == "messages"}
    assert {r["model"] for r in bucket["results"]} == models
    # Grouped by service tier: the batch-tier call on its own line.
    tiers = get(meter, keys_a[0], USAGE, **today(), **{"group_by[]": "service_tier"}).json()["data"][0]["results"]
    assert {r["service_tier"]: r["output_tokens"] for r in tiers} == {"standard": 48, "batch": 5}


def test_another_tenants_usage_is_never_visible(
    meter: Process, ledger: Ledger, two_tenants: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    keys_a, key_b = two_tenants
    mine = get(meter, key_b, USAGE, **today()).json()["data"][0]["results"]
    assert report_sums(mine) == ledger_sums(ledger.rows(tenant_id=key_b["tenant_id"]))
    assert report_sums(mine)["output_tokens"] == 45
    # Asking for tenant A's key by id finds nothing; so does a workspace.
    for params in ({"api_key_ids[]": keys_a[0]["id"]}, {"workspace_ids[]": "wrkspc_01"}):
        assert get(meter, key_b, USAGE, **today(), **params).json()["data"][0]["results"] == []
    theirs = get(meter, keys_a[1], COST, **today()).json()["data"][0]["results"]
    ours = get(meter, key_b, COST, **today()).json()["data"][0]["results"]
    spent_b = sum(r["cost_usd"] for r in ledger.rows(tenant_id=key_b["tenant_id"]) if r["cost_usd"] is not None)
    assert Decimal(ours[0]["amount"]) == spent_b * 100 != Decimal(theirs[0]["amount"])


def test_cost_report_equals_the_ledger_and_itemises_fees(
    meter: Process, ledger: Ledger, two_tenants: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    keys_a, _ = two_tenants
    rows = [r for r in ledger.rows(tenant_id=keys_a[0]["tenant_id"]) if r["endpoint"] == "messages"]
    spent = sum((r["cost_usd"] for r in rows), Decimal(0))
    total = get(meter, keys_a[0], COST, **today()).json()
    (result,) = total["data"][0]["results"]
    assert set(result) == COST_FIELDS and result["currency"] == "USD"
    assert Decimal(result["amount"]) == spent * 100  # cents, exact
    lines = get(meter, keys_a[0], COST, **today(), **{"group_by[]": "description"}).json()["data"][0]["results"]
    assert sum(Decimal(line["amount"]) for line in lines) == spent * 100
    fees = sum(Decimal(fee["usd"]) for r in rows for fee in (r["fees"] or {}).values())
    (search,) = [line for line in lines if line["cost_type"] == "web_search"]
    assert search["model"] is None and Decimal(search["amount"]) == fees * 100 > 0
    assert {line["description"] for line in lines} >= {"Claude Sonnet 4.6 Usage", "Claude Sonnet 4.6 Usage (Batch)"}


def test_a_client_written_for_anthropics_reports_reads_them_unchanged(
    meter: Process, upstream: Process, ledger: Ledger, two_tenants: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    keys_a, _ = two_tenants
    day = datetime.now(UTC).date()
    sides = asyncio.run(fetch_upstream(meter.base_url, keys_a[1]["key"], day, day + timedelta(days=1)))
    rows = [r for r in ledger.rows(tenant_id=keys_a[0]["tenant_id"]) if r["endpoint"] == "messages"]
    counted: Counter[str] = Counter()
    for side in sides.values():
        counted.update({kind.replace("cache_creation", "ephemeral"): n for kind, n in side.counts.items() if n})
    assert counted == +ledger_sums(rows)
    assert sum(side.usd for side in sides.values()) == sum(r["cost_usd"] for r in rows)
    # Answered by meter: never forwarded with the operator's key.
    assert not [path for _, path in upstream_requests(upstream) if "/v1/organizations" in path]


def test_report_paging_and_errors_are_anthropics(
    meter: Process, two_tenants: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    keys_a, _ = two_tenants
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=4)
    first = get(meter, keys_a[0], USAGE, starting_at=start.isoformat(), bucket_width="1m", limit=3).json()
    assert len(first["data"]) == 3 and first["has_more"] is True
    assert first["data"][0]["starting_at"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    second = get(
        meter, keys_a[0], USAGE, starting_at=start.isoformat(), bucket_width="1m", limit=3, page=first["next_page"]
    ).json()
    assert second["data"][0]["starting_at"] == first["data"][-1]["ending_at"]
    minutes = [*first["data"], *second["data"]]
    assert sum(report_sums(b["results"])["output_tokens"] for b in minutes) == 53
    for path, params in (
        (USAGE, {}),
        (USAGE, {**today(), "bucket_width": "1w"}),
        (USAGE, {**today(), "limit": "32"}),
        (USAGE, {**today(), "group_by[]": "tenant"}),
        (USAGE, {"starting_at": "yesterday"}),
        (USAGE, {"starting_at": "2026-12-01T00:00:00"}),
        (COST, {**today(), "bucket_width": "1h"}),
        (COST, {**today(), "page": "page_!!"}),
    ):
        refused = get(meter, keys_a[0], path, **params)
        assert refused.status_code == 400, (path, params, refused.text)
        assert refused.json()["error"]["type"] == "invalid_request_error"
    unauthenticated = httpx.get(meter.base_url + USAGE, params=today(), timeout=10)
    assert unauthenticated.status_code == 401


def test_limits_show_used_and_remaining(admin: Admin, meter: Process, ledger: Ledger) -> None:
    key = admin.issue_key(admin.create_tenant(f"headroom-{secrets.token_hex(3)}")["id"])
    tenant_limits = {"budget_usd_per_month": "5", "requests_per_minute": 100}
    assert admin.request("PUT", f"/admin/tenants/{key['tenant_id']}/limits", json=tenant_limits).status_code == 200
    assert admin.request("PUT", f"/admin/keys/{key['id']}/limits", json={"tokens_per_day": 100000}).status_code == 200
    assert admin.request("POST", f"/admin/tenants/{key['tenant_id']}/credits", json={"amount_usd": "2"}).is_success
    ledger.row(use(meter, key, output_tokens="40"))
    rows = [r for r in ledger.rows(tenant_id=key["tenant_id"]) if r["endpoint"] == "messages"]
    spent = sum(r["cost_usd"] for r in rows)
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)

    def view() -> dict[str, Any]:
        answer = get(meter, key, "/v1/meter/limits")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    body = view()
    assert body["tenant_id"] == key["tenant_id"] and body["key_id"] == key["id"]
    by_name = {(item["applies_to"], item["name"]): item for item in body["limits"]}
    assert set(by_name) == {
        ("tenant", "budget_usd_per_month"),
        ("tenant", "requests_per_minute"),
        ("key", "tokens_per_day"),
    }
    budget = by_name["tenant", "budget_usd_per_month"]
    assert Decimal(budget["used"]) == spent and Decimal(budget["remaining"]) == 5 - spent
    assert budget["resets_at"].endswith("-01T00:00:00Z")
    day = by_name["key", "tokens_per_day"]
    assert (day["used"], day["remaining"]) == (tokens, 100000 - tokens)
    assert by_name["tenant", "requests_per_minute"] | {"resets_at": None} == {
        "applies_to": "tenant",
        "name": "requests_per_minute",
        "period": "minute",
        "limit": 100,
        "used": None,
        "remaining": None,
        "resets_at": None,
    }
    assert Decimal(body["credit"]["balance_usd"]) == 2 - spent
    # Reading it costs nothing: the numbers stay as they were, and its ledger rows cost $0.
    assert view()["limits"] == body["limits"]
    assert {r["cost_usd"] for r in ledger.rows(tenant_id=key["tenant_id"]) if r["endpoint"] == "meter.limits"} <= {0}


def test_reports_count_against_requests_per_minute(admin: Admin, meter: Process) -> None:
    key = admin.issue_key(admin.create_tenant(f"polling-{secrets.token_hex(3)}")["id"])
    limits = {"requests_per_minute": 2}
    assert admin.request("PUT", f"/admin/tenants/{key['tenant_id']}/limits", json=limits).status_code == 200
    answers = [get(meter, key, USAGE, **today()), get(meter, key, COST, **today()), get(meter, key, "/v1/meter/limits")]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["type"] == "rate_limit_error"
