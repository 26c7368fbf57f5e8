"""The demo upstream's usage and cost reports, from a record of replies: UTC buckets, grouping,
paging, costs in cents at the demo's own list prices (every multiplier and the long-context tier),
what the cost report leaves out, and the adjustments tests inject."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from meter.upstream_demo.errors import DemoError
from meter.upstream_demo.prices import multiplier, token_prices
from meter.upstream_demo.record import Adjustment, Record
from meter.upstream_demo.reports import cost_report, display_name, usage_report
from meter.upstream_demo.usage import Usage

D = Decimal
DAY = datetime(2026, 12, 2, tzinfo=UTC)
NOON = DAY.timestamp() + 12 * 3600
TWO_DAYS = {"starting_at": "2026-12-02T00:00:00Z", "ending_at": "2026-12-04T00:00:00Z"}


def results(report: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return [bucket["results"] for bucket in report["data"]]


def cents(report: dict[str, Any]) -> list[Decimal]:
    return [sum((D(result["amount"]) for result in bucket), D(0)) for bucket in results(report)]


def test_usage_is_bucketed_by_utc_day_and_grouped_by_model() -> None:
    record = Record()
    record.add(NOON, "claude-haiku-4-5", Usage(10, 20, cache_read=3, cache_write_5m=4, cache_write_1h=5), False)
    record.add(NOON + 60, "claude-haiku-4-5", Usage(1, 2, server_tool_use={"web_search_requests": 2}), False)
    record.add(NOON + 86400, "claude-sonnet-4-6", Usage(7, 8, service_tier="batch"), False)
    report = usage_report(record, TWO_DAYS, ["model"])
    assert [(b["starting_at"], b["ending_at"]) for b in report["data"]] == [
        ("2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"),
        ("2026-12-03T00:00:00Z", "2026-12-04T00:00:00Z"),
    ]
    (haiku,), (sonnet,) = results(report)
    assert haiku == {
        "uncached_input_tokens": 11,
        "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 5},
        "cache_read_input_tokens": 3,
        "output_tokens": 22,
        "server_tool_use": {"web_search_requests": 2},
        "api_key_id": None,
        "workspace_id": None,
        "model": "claude-haiku-4-5",
        "service_tier": None,
        "context_window": None,
        "inference_geo": None,
        "speed": None,
    }
    assert (sonnet["model"], sonnet["uncached_input_tokens"]) == ("claude-sonnet-4-6", 7)
    by_tier = usage_report(record, {**TWO_DAYS, "bucket_width": "1h"} | {"limit": "48"}, ["service_tier"])
    hours = [bucket for bucket in by_tier["data"] if bucket["results"]]
    assert [(h["starting_at"], h["results"][0]["service_tier"]) for h in hours] == [
        ("2026-12-02T12:00:00Z", "standard"),
        ("2026-12-03T12:00:00Z", "batch"),
    ]


def test_compaction_steps_and_late_writes_are_recorded_as_billed() -> None:
    record = Record()
    usage = Usage(250_000, 12, cache_write_1h=100, cache_write_late=400, compaction=(5000, 300))
    record.add(NOON, "claude-sonnet-4-5", usage, late_writes_1h=True)
    record.add(NOON, "claude-sonnet-4-5", Usage(1, 1, cache_write_late=9), late_writes_1h=False)
    windows = {r["context_window"]: r for r in results(usage_report(record, TWO_DAYS, ["context_window"]))[0]}
    # The compaction step is a call of its own in the 0-200k window; the message step is long.
    assert windows["0-200k"]["uncached_input_tokens"] == 5001 and windows["0-200k"]["output_tokens"] == 301
    assert windows["0-200k"]["cache_creation"] == {"ephemeral_5m_input_tokens": 9, "ephemeral_1h_input_tokens": 0}
    assert windows["200k-1M"]["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 500}


def test_pages_follow_next_page_to_the_end() -> None:
    query = {"starting_at": "2026-11-01T00:00:00Z", "ending_at": "2026-12-03T00:00:00Z", "limit": "20"}
    first = usage_report(Record(), query, [])
    assert len(first["data"]) == 20 and first["has_more"]
    second = usage_report(Record(), {**query, "page": first["next_page"]}, [])
    assert second["data"][0]["starting_at"] == "2026-11-21T00:00:00Z"
    assert len(second["data"]) == 12 and not second["has_more"] and second["next_page"] is None
    # A start inside a bucket is snapped down to the bucket's start.
    snapped = usage_report(Record(), {"starting_at": "2026-12-02T13:14:15Z", "ending_at": "2026-12-03T00:00:00Z"}, [])
    assert [bucket["starting_at"] for bucket in snapped["data"]] == ["2026-12-02T00:00:00Z"]


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"starting_at": "yesterday"},
        {"starting_at": "2026-12-02T00:00:00"},
        {**TWO_DAYS, "bucket_width": "2d"},
        {**TWO_DAYS, "limit": "32"},
        {**TWO_DAYS, "page": "page_%%%"},
    ],
)
def test_bad_queries_are_a_400(query: dict[str, str]) -> None:
    with pytest.raises(DemoError) as caught:
        usage_report(Record(), query, [])
    assert caught.value.status == 400


def test_group_by_must_be_a_known_dimension() -> None:
    with pytest.raises(DemoError):
        usage_report(Record(), TWO_DAYS, ["tenant"])
    with pytest.raises(DemoError):
        cost_report(Record(), TWO_DAYS, ["model"])
    with pytest.raises(DemoError):
        cost_report(Record(), {**TWO_DAYS, "bucket_width": "1h"}, [])


def test_list_prices_and_multipliers() -> None:
    assert token_prices("claude-opus-4-8", "0-200k") == token_prices("claude-opus-4-5-20251101", "200k-1M")
    long = token_prices("claude-sonnet-4-5", "200k-1M")
    assert long is not None and (long.input, long.output, long.write_5m, long.write_1h, long.read) == (
        D(6),
        D("22.5"),
        D("7.5"),
        D(12),
        D("0.60"),
    )
    assert token_prices("claude-sonnet-4-6", "200k-1M") == token_prices("claude-sonnet-4-6", "0-200k")
    assert token_prices("claude-unknown", "0-200k") is None
    assert multiplier("claude-opus-4-8", "batch", "us", "fast") == D("1.1")  # 0.5 x 1.1 x 2
    assert multiplier("claude-haiku-4-5", "standard", "us", "fast") == 1
    assert multiplier("claude-sonnet-4-6", "standard", "us", None) == D("1.1")


def test_costs_are_exact_cents_at_list_prices() -> None:
    record = Record()
    # Sonnet 4.6: 1000 x $3 + 2000 x $15 + 100 x $3.75 + 10 x $6 + 500 x $0.30 per million = $0.033585
    record.add(
        NOON, "claude-sonnet-4-6", Usage(1000, 2000, cache_read=500, cache_write_5m=100, cache_write_1h=10), False
    )
    # Opus 4.8 batch, in the US, fast: 1000 x $5 x 0.5 x 1.1 x 2 = $0.0055; and 3 searches, $0.03
    usage = Usage(
        1000, 0, service_tier="batch", inference_geo="us", speed="fast", server_tool_use={"web_search_requests": 3}
    )
    record.add(NOON, "claude-opus-4-8", usage, False)
    # Left out: the priority tier and a model the demo has no price for (their searches too)
    record.add(NOON, "claude-haiku-4-5", Usage(10**6, 10**6, service_tier="priority"), False)
    record.add(NOON, "claude-unknown", Usage(10**6, 10**6), False)
    report = cost_report(record, TWO_DAYS, [])
    assert results(report) == [[{"currency": "USD", "amount": "6.9085", "workspace_id": None, **NULL_LINE}], []]
    lines = {(r["model"], r["token_type"]): r for r in results(cost_report(record, TWO_DAYS, ["description"]))[0]}
    assert D(lines["claude-sonnet-4-6", "output_tokens"]["amount"]) == D(3)  # cents
    assert lines["claude-sonnet-4-6", "cache_creation.ephemeral_1h_input_tokens"]["amount"] == "0.006"
    batch = lines["claude-opus-4-8", "uncached_input_tokens"]
    assert (batch["amount"], batch["service_tier"], batch["cost_type"]) == ("0.55", "batch", "tokens")
    assert batch["description"] == "Claude Opus 4.8 Usage - Input Tokens (Batch)"
    search = lines[None, None]
    assert (search["cost_type"], search["amount"], search["description"]) == ("web_search", "3", "Web Search")
    assert {model for model, _ in lines} == {"claude-sonnet-4-6", "claude-opus-4-8", None}


NULL_LINE = dict.fromkeys(("model", "cost_type", "token_type", "context_window", "service_tier", "description"))


def test_long_context_prices_every_token_of_the_call() -> None:
    record = Record()
    record.add(NOON, "claude-sonnet-4-5", Usage(200_000, 0, cache_read=1), False)  # 200,001 prompt tokens
    record.add(NOON, "claude-sonnet-4-5", Usage(200_000, 0), False)  # exactly 200,000: standard
    assert cents(cost_report(record, TWO_DAYS, [])) == [D("120.00006") + D(60), D(0)]


def test_adjustments_add_to_their_day_and_model() -> None:
    record = Record()
    record.add(NOON, "claude-haiku-4-5", Usage(0, 1000), False)  # $0.005
    record.adjustments.append(Adjustment("claude-haiku-4-5", date(2026, 12, 3), D("1.25"), 100))
    record.adjustments.append(Adjustment("claude-haiku-4-5", date(2026, 12, 3), D("-0.25"), -40))
    assert cents(cost_report(record, TWO_DAYS, [])) == [D("0.5"), D(100)]
    (first,), (second,) = results(usage_report(record, TWO_DAYS, ["model"]))
    assert (first["output_tokens"], second["output_tokens"]) == (1000, 60)
    # At 00:00 of its day, in 1h buckets too.
    hourly = usage_report(record, {**TWO_DAYS, "bucket_width": "1h", "limit": "48"}, [])
    assert [b["starting_at"] for b in hourly["data"] if b["results"]] == [
        "2026-12-02T12:00:00Z",
        "2026-12-03T00:00:00Z",
    ]


def test_model_display_names() -> None:
    assert display_name("claude-sonnet-4-5-20250929") == "Claude Sonnet 4.5"
    assert display_name("claude-sonnet-4-0") == "Claude Sonnet 4"
    assert display_name("gpt-4") == "gpt-4"
