"""The worst case a request is reserved at (meter/proxy/estimate.py): what it reads of the body, and
the bound it computes. Expected figures are worked out by hand in their comments."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from meter.pricing import LongContext, Price, TokenPrices
from meter.proxy.estimate import (
    IMAGE_TOKENS,
    MAX_KEPT_RATES,
    SERVER_LOOP_STEPS,
    TOOL_PROMPT_TOKENS,
    RequestShape,
    shape_of,
    worst_case,
)

D = Decimal
IMAGE_DATA = "iVBORw0KGgo" * 1000  # 11,000 bytes of base64
PRICE = Price(
    model="claude-sonnet-4-6",
    effective_from=datetime(2025, 1, 1, tzinfo=UTC),
    tokens=TokenPrices(D(3), D(15), D("3.75"), D(6), D("0.3")),
    server_tool_fees={"web_search_requests": D("0.01")},
    multipliers={
        "inference_geo": {"us": D("1.1")},
        "service_tier": {"batch": D("0.5"), "priority": D("1.25")},
        "speed": {"fast": D(2)},
    },
    context_window=200_000,
)


def request(*content: Any, **fields: Any) -> tuple[dict[str, Any], int]:
    document = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": list(content)}], **fields}
    return document, len(json.dumps(document).encode())


def shape(*content: Any, **fields: Any) -> RequestShape:
    return shape_of(*request(*content, **fields))


def image(source: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "image", "source": source or {"type": "base64", "media_type": "image/png", "data": IMAGE_DATA}}


def test_text_is_a_token_per_byte_of_the_whole_body() -> None:
    for text in ("", "a", "Hello, world! " * 100, "数字" * 50):
        document, size = request({"type": "text", "text": text})
        assert shape_of(document, size).text_tokens == size


def test_images_by_any_source_cost_a_fixed_ceiling_not_their_bytes() -> None:
    nested = {"type": "tool_result", "tool_use_id": "t", "content": [image()]}
    by_url = image({"type": "url", "url": "https://example.com/a.png"})
    by_file = image({"type": "file", "file_id": "file_01"})
    document, size = request(image(), nested, by_url, by_file)
    found = shape_of(document, size)
    assert found.images == 4 and found.payload_bytes == 2 * len(IMAGE_DATA)
    bound = worst_case(PRICE, found, 0)
    assert bound.tokens == size - 2 * len(IMAGE_DATA) + 4 * IMAGE_TOKENS


def test_content_meter_cannot_measure_reserves_the_whole_context_window() -> None:
    for document in (
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": IMAGE_DATA}},
        {"type": "document", "source": {"type": "file", "file_id": "file_01"}},
        {"type": "container_upload", "file_id": "file_01"},
    ):
        found = shape(document)
        assert found.unmeasured == 1
        bound = worst_case(PRICE, found, 100)
        # 200,000 input at the geo multiplier's 1.1 and the priority tier's 1.25 (neither named)
        assert bound.tokens == 200_000 + 100
        assert bound.usd == (200_000 * 3 + 100 * 15) * D("1.1") * D("1.25") / 1_000_000


def test_a_plain_text_document_is_measured_as_text() -> None:
    text_document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}}
    assert shape(text_document).unmeasured == 0


def test_the_first_step_never_exceeds_the_context_window() -> None:
    found = shape({"type": "text", "text": "x" * 300_000})
    assert worst_case(PRICE, found, 10).tokens == 200_000 + 10


def test_tools_add_the_tool_prompt_and_server_tools_loop_within_their_uses() -> None:
    client_tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    only_client = shape({"type": "text", "text": "hi"}, tools=[client_tool])
    assert only_client.server_tools == {}
    assert worst_case(PRICE, only_client, 0).tokens == only_client.text_tokens + TOOL_PROMPT_TOKENS
    searching = shape(
        {"type": "text", "text": "hi"},
        tools=[client_tool, search],
        inference_geo="global",
        service_tier="standard_only",
    )
    first = searching.text_tokens + TOOL_PROMPT_TOKENS
    bound = worst_case(PRICE, searching, 50)
    # 1 + 3 steps: the first, then 3 more of up to the whole window; 3 searches at $0.01
    assert bound.tokens == first + 3 * 200_000 + 50
    assert bound.usd == ((first + 3 * 200_000) * 3 + 50 * 15) / D(1_000_000) + D("0.03")


def test_a_server_tool_without_max_uses_is_reserved_at_the_default_and_the_loop_is_capped() -> None:
    search = {"type": "web_search_20250305", "name": "web_search"}
    found = shape({"type": "text", "text": "hi"}, tools=[search], inference_geo="global", service_tier="standard_only")
    bound = worst_case(PRICE, found, 0, default_uses=25)
    first = found.text_tokens + TOOL_PROMPT_TOKENS
    assert bound.tokens == first + (SERVER_LOOP_STEPS - 1) * 200_000
    assert bound.usd == (first + (SERVER_LOOP_STEPS - 1) * 200_000) * 3 / D(1_000_000) + 25 * D("0.01")


def test_an_operator_bound_on_tool_results_tightens_the_loop_and_never_passes_the_window() -> None:
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    found = shape({"type": "text", "text": "hi"}, tools=[search], inference_geo="global", service_tier="standard_only")
    first = found.text_tokens + TOOL_PROMPT_TOKENS
    # three steps, each reading the one before's input plus 64 output and 20,000 result tokens
    assert worst_case(PRICE, found, 64, tool_result_tokens=20_000).tokens == 3 * first + 3 * 20_064 + 64
    # past the window, a step reads the whole window, no more
    assert worst_case(PRICE, found, 64, tool_result_tokens=150_000).tokens == first + (first + 150_064) + 200_000 + 64


def test_caching_reserves_input_at_the_dearest_input_price_read_from_the_parsed_body() -> None:
    # The key spelt with a JSON escape is the same key once parsed.
    escaped = json.loads('{"type": "text", "text": "hi", "cache_\\u0063ontrol": {"type": "ephemeral", "ttl": "1h"}}')
    found = shape(escaped, inference_geo="global", service_tier="standard_only")
    assert found.caches and found.cache_1h
    assert worst_case(PRICE, found, 0).usd == found.text_tokens * 6 / D(1_000_000)
    plain = shape({"type": "text", "text": "hi"}, inference_geo="global", service_tier="standard_only")
    assert worst_case(PRICE, plain, 0).usd == plain.text_tokens * 3 / D(1_000_000)


def test_named_geo_tier_and_speed_use_their_own_multipliers() -> None:
    fast_us = shape({"type": "text", "text": "hi"}, inference_geo="us", service_tier="standard_only", speed="fast")
    assert worst_case(PRICE, fast_us, 1_000_000).usd == 15 * D("1.1") * 2 + fast_us.text_tokens * 3 * D("2.2") / D(
        1_000_000
    )
    batch = shape({"type": "text", "text": "hi"}, inference_geo="global", service_tier="batch")
    assert worst_case(PRICE, batch, 1_000_000).usd == (15 + batch.text_tokens * 3 / D(1_000_000)) * D("0.5")


def test_long_context_prices_when_a_step_may_pass_the_threshold() -> None:
    long_price = Price(
        "m",
        PRICE.effective_from,
        PRICE.tokens,
        long_context=LongContext(200, TokenPrices(D(6), D("22.5"), D("7.5"), D(12), D("0.6"))),
        context_window=200_000,
    )
    short = shape({"type": "text", "text": "x"}, inference_geo="global")
    assert short.text_tokens < 200
    assert worst_case(long_price, short, 10).usd == (short.text_tokens * 3 + 10 * 15) / D(1_000_000)
    big = shape({"type": "text", "text": "x" * 100}, inference_geo="global")
    assert big.text_tokens > 200
    assert worst_case(long_price, big, 10).usd == (big.text_tokens * 6 + 10 * D("22.5")) / D(1_000_000)


def test_compaction_doubles_the_steps_and_the_output() -> None:
    found = shape({"type": "text", "text": "hi"}, context_management={"edits": [{"type": "compact_20260112"}]})
    assert worst_case(PRICE, found, 10).tokens == found.text_tokens + 200_000 + 20


def test_an_unpriced_model_still_bounds_tokens() -> None:
    found = shape({"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}})
    bound = worst_case(None, found, 7)
    assert bound.tokens == 1_000_000 + 7 and bound.usd == 0


def test_the_rates_a_price_keeps_are_per_kind_of_call_and_bounded() -> None:
    price = Price("m", PRICE.effective_from, PRICE.tokens, multipliers=PRICE.multipliers, context_window=200_000)
    text = {"type": "text", "text": "hi"}
    # One price, calls of every kind in turn: each is reserved at its own rates, whatever came before.
    for _ in range(2):
        kinds = (
            ("us", "priority", "fast", D("2.75")),
            ("us", "batch", None, D("0.55")),
            ("us", "batch", "fast", D("1.1")),  # only the speed differs from the one before
            ("eu", "batch", None, D("0.5")),  # a geo without a multiplier of its own: 1
        )
        for geo, tier, speed, factor in kinds:
            found = shape(text, inference_geo=geo, service_tier=tier, speed=speed)
            assert worst_case(price, found, 10).usd == (found.text_tokens * 3 + 10 * 15) * factor / D(1_000_000)
        cached = shape({**text, "cache_control": {"type": "ephemeral"}}, inference_geo="us", service_tier="batch")
        assert worst_case(price, cached, 10).usd == (cached.text_tokens * 6 + 10 * 15) * D("0.55") / D(1_000_000)
    # Tenants name the tier: a thousand made-up ones keep at most MAX_KEPT_RATES kinds.
    for i in range(1000):
        made_up = shape(text, inference_geo="us", service_tier=f"tier-{i}", speed="fast")
        assert worst_case(price, made_up, 10).usd == (made_up.text_tokens * 3 + 10 * 15) * D("2.2") / D(1_000_000)
    assert len(price.reserve_rates) == MAX_KEPT_RATES
