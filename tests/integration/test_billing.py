"""Bill exactly what the upstream bills: every fee and modifier of a reply, through the real SDK to the
demo upstream, in JSON and in streams split anywhere; each ledger cost equals a bill computed here,
independently of meter's pricing code, from Anthropic's list prices (shared/anthropic-protocol.md
section 9) to the last digit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support import Admin, Ledger, Process

D = Decimal


@dataclass(frozen=True)
class ListPrice:
    """USD per million tokens: input, output, 5m write, 1h write, cache read."""

    input: Decimal
    output: Decimal
    write_5m: Decimal
    write_1h: Decimal
    read: Decimal


SONNET_46 = ListPrice(D(3), D(15), D("3.75"), D(6), D("0.30"))
SONNET_45_LONG = ListPrice(D(6), D("22.5"), D("7.5"), D(12), D("0.60"))  # above 200K prompt tokens
HAIKU_45 = ListPrice(D(1), D(5), D("1.25"), D(2), D("0.10"))
OPUS_48 = ListPrice(D(5), D(25), D("6.25"), D(10), D("0.50"))
WEB_SEARCH = D("0.01")


def bill(row: dict[str, Any], price: ListPrice, multiplier: Decimal | None = None, searches: int = 0) -> Decimal:
    """The upstream's bill for a ledger row's tokens, at a list price."""
    tokens: Decimal = (
        row["input_tokens"] * price.input
        + row["output_tokens"] * price.output
        + row["cache_creation_5m_input_tokens"] * price.write_5m
        + row["cache_creation_1h_input_tokens"] * price.write_1h
        + row["cache_read_input_tokens"] * price.read
    ) / 1_000_000
    return tokens * (multiplier or 1) + searches * WEB_SEARCH


@pytest.fixture
def client(meter: Process, tenant_key: dict[str, Any]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=meter.base_url, api_key=tenant_key["key"], max_retries=0) as sdk:
        yield sdk


def call(client: anthropic.Anthropic, ledger: Ledger, stream: bool, model: str, controls: dict[str, str],
         **body: Any) -> dict[str, Any]:  # fmt: skip
    """One call through meter, JSON or streamed (split anywhere), and its ledger row."""
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "What is new?"}],
        **body,
    }
    headers = {**controls, **({"x-demo-split": "7"} if stream else {})}
    if stream:
        with client.messages.with_streaming_response.create(**params, stream=True, extra_headers=headers) as raw:
            for _ in raw.iter_bytes():
                pass
            request_id = raw.headers["x-meter-request-id"]
    else:
        request_id = client.messages.with_raw_response.create(**params, extra_headers=headers).headers[
            "x-meter-request-id"
        ]
    row = ledger.row(request_id)
    assert row["status"] == 200 and not row["partial"], row
    return row


STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


@STREAMED
def test_web_searches_are_billed_per_search(client: anthropic.Anthropic, ledger: Ledger, stream: bool) -> None:
    row = call(client, ledger, stream, "claude-sonnet-4-6", {"x-demo-web-search": "3", "x-demo-web-fetch": "2"})
    assert row["server_tool_use"] == {"web_search_requests": 3, "web_fetch_requests": 2}
    assert row["cost_usd"] == bill(row, SONNET_46, searches=3)
    assert row["fees"] == {"web_search_requests": {"units": 3, "usd": "0.03"}}


@STREAMED
def test_us_inference_costs_a_tenth_more_on_4_6_models(
    client: anthropic.Anthropic, ledger: Ledger, stream: bool
) -> None:
    row = call(client, ledger, stream, "claude-sonnet-4-6", {}, extra_body={"inference_geo": "us"})
    assert row["inference_geo"] == "us"
    assert row["cost_usd"] == bill(row, SONNET_46, D("1.1"))
    other = call(client, ledger, stream, "claude-haiku-4-5", {"x-demo-inference-geo": "us"})
    assert other["cost_usd"] == bill(other, HAIKU_45)  # no geo premium on a model that has none


@STREAMED
def test_batch_tier_is_half_price(client: anthropic.Anthropic, ledger: Ledger, stream: bool) -> None:
    row = call(client, ledger, stream, "claude-haiku-4-5", {"x-demo-service-tier": "batch"})
    assert row["service_tier"] == "batch"
    assert row["cost_usd"] == bill(row, HAIKU_45, D("0.5"))


@STREAMED
def test_fast_mode_has_its_own_price(client: anthropic.Anthropic, ledger: Ledger, stream: bool) -> None:
    row = call(client, ledger, stream, "claude-opus-4-8", {"x-demo-speed": "fast"}, extra_body={"speed": "fast"})
    assert row["speed"] == "fast"
    assert row["cost_usd"] == bill(row, OPUS_48, D(2))  # $10 / $50 per million


@STREAMED
def test_long_context_prices_apply_past_200k_prompt_tokens(
    client: anthropic.Anthropic, ledger: Ledger, stream: bool
) -> None:
    row = call(client, ledger, stream, "claude-sonnet-4-5", {"x-demo-input-tokens": "200001"})
    assert row["long_context"] and row["input_tokens"] == 200_001
    assert row["cost_usd"] == bill(row, SONNET_45_LONG)
    short = call(client, ledger, stream, "claude-sonnet-4-5", {"x-demo-input-tokens": "200000"})
    assert not short["long_context"] and short["cost_usd"] == bill(short, SONNET_46)


@STREAMED
def test_cache_writes_are_priced_by_their_ttl(client: anthropic.Anthropic, ledger: Ledger, stream: bool) -> None:
    controls = {"x-demo-cache-write-5m": "700", "x-demo-cache-write-1h": "300", "x-demo-cache-read": "2000"}
    row = call(client, ledger, stream, "claude-sonnet-4-6", controls)
    assert (row["cache_creation_5m_input_tokens"], row["cache_creation_1h_input_tokens"]) == (700, 300)
    assert row["cost_usd"] == bill(row, SONNET_46)


def test_cache_writes_a_stream_adds_late_are_priced_at_1h_when_the_request_asked_for_1h(
    client: anthropic.Anthropic, ledger: Ledger
) -> None:
    cached_system = [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    controls = {"x-demo-cache-write-1h": "100", "x-demo-cache-write-late": "400"}
    row = call(client, ledger, True, "claude-sonnet-4-6", controls, system=cached_system)
    assert (row["cache_creation_5m_input_tokens"], row["cache_creation_1h_input_tokens"]) == (0, 500)
    assert row["cost_usd"] == bill(row, SONNET_46)
    plain = call(client, ledger, True, "claude-sonnet-4-6", controls)  # no 1h asked for: the default 5m
    assert (plain["cache_creation_5m_input_tokens"], plain["cache_creation_1h_input_tokens"]) == (400, 100)


@STREAMED
def test_compaction_iterations_are_billed_as_the_sum_of_their_steps(
    client: anthropic.Anthropic, ledger: Ledger, stream: bool
) -> None:
    controls = {"x-demo-iterations": "compaction", "x-demo-compaction-input": "180000",
                "x-demo-compaction-output": "3500"}  # fmt: skip
    row = call(client, ledger, stream, "claude-sonnet-4-6", controls)
    steps = row["iterations"]
    assert [step["type"] for step in steps] == ["compaction", "message"]
    assert row["input_tokens"] == 180_000 + steps[1]["input_tokens"]
    assert row["output_tokens"] == 3500 + steps[1]["output_tokens"]
    assert row["cost_usd"] == bill(row, SONNET_46)


@STREAMED
def test_unknown_usage_fields_are_kept(client: anthropic.Anthropic, ledger: Ledger, stream: bool) -> None:
    extra = {"future_fee_units": 4, "future_details": {"kind": "x"}}
    row = call(client, ledger, stream, "claude-haiku-4-5", {"x-demo-usage-extra": json.dumps(extra)})
    assert row["usage_extra"] == extra
    assert row["cost_usd"] == bill(row, HAIKU_45)


def test_the_statement_shows_fees_as_their_own_lines(
    client: anthropic.Anthropic, ledger: Ledger, admin: Admin, tenant_key: dict[str, Any]
) -> None:
    rows = [call(client, ledger, i % 2 == 1, "claude-sonnet-4-6", {"x-demo-web-search": str(i)}) for i in range(1, 5)]
    month = rows[0]["started_at"].strftime("%Y-%m")
    statement = admin.request("GET", f"/admin/tenants/{tenant_key['tenant_id']}/statement", params={"month": month})
    report = statement.json()
    (fee,) = report["fees"]
    assert (fee["model"], fee["fee"], fee["units"], fee["unit_usd"]) == (
        "claude-sonnet-4-6",
        "web_search_requests",
        10,
        "0.01",
    )
    assert D(fee["cost_usd"]) == D("0.10")
    assert D(report["total_usd"]) == sum(row["cost_usd"] for row in rows)
    (line,) = report["lines"]
    assert D(line["cost_usd"]) + D(fee["cost_usd"]) == D(report["total_usd"])


def test_prices_export_and_import_round_trip_audited(database_url: str, tmp_path: Path, admin: Admin) -> None:
    from tests.integration.test_cli import meter_text

    exported = tmp_path / "prices.yaml"
    meter_text(database_url, "prices", "export", "--output", str(exported))
    text = exported.read_text()
    assert "claude-sonnet-4-6" in text and "web_search_requests" in text
    # A new price for one model, effective in the future, in JSON (which the import also reads).
    new = {
        "prices": [
            {
                "model": "claude-import-test",
                "effective_from": "2099-01-01T00:00:00Z",
                "input_per_mtok": "2",
                "output_per_mtok": "8",
                "server_tool_fees": {"web_search_requests": "0.01"},
                "multipliers": {"service_tier": {"batch": "0.5"}},
                "context_window": 200000,
                "source": "test",
            }
        ]
    }
    path = tmp_path / "new.json"
    path.write_text(json.dumps(new))
    meter_text(database_url, "prices", "import", str(path))
    listed = admin.request("GET", "/admin/prices").json()["data"]
    (imported,) = [price for price in listed if price["model"] == "claude-import-test"]
    assert imported["cache_write_1h_per_mtok"] == "4" and imported["multipliers"] == {"service_tier": {"batch": "0.5"}}
    audit: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:  # every page: the log is oldest first
        page = admin.request("GET", "/admin/audit", params={"limit": 1000, **({"after": cursor} if cursor else {})})
        audit += page.json()["data"]
        if not (cursor := page.json()["next_cursor"]):
            break
    assert any(entry["action"] == "prices.set" and entry["actor"].startswith("cli:") for entry in audit)
    # Unknown fields and past dates are refused, naming what is wrong.
    new["prices"][0]["input_per_mtokk"] = "1"
    path.write_text(json.dumps(new))
    with pytest.raises(AssertionError, match="input_per_mtokk"):
        meter_text(database_url, "prices", "import", str(path))
