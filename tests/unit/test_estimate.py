"""The worst case a request is reserved at: input tokens estimated from the body, output at max_tokens."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from meter.pricing import Price
from meter.proxy.estimate import input_tokens, worst_case_usd

IMAGE_DATA = "iVBORw0KGgo" * 1000  # 11,000 bytes of base64
PRICE = Price(
    model="claude-sonnet-4-6",
    effective_from=datetime(2025, 1, 1, tzinfo=UTC),
    input_per_mtok=Decimal(3),
    output_per_mtok=Decimal(15),
    cache_write_5m_per_mtok=Decimal("3.75"),
    cache_write_1h_per_mtok=Decimal(6),
    cache_read_per_mtok=Decimal("0.3"),
)


def body(*content: Any) -> bytes:
    return json.dumps(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": list(content)}]}
    ).encode()


def image(data: str = IMAGE_DATA) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def bytes_as_tokens(size: int) -> int:
    return math.ceil(size / 3)


def test_text_costs_a_token_per_three_bytes_of_the_whole_body_rounded_up() -> None:
    for text in ("", "a", "ab", "abc", "Hello, world! " * 100):
        request = body({"type": "text", "text": text})
        assert input_tokens(request) == bytes_as_tokens(len(request))


def test_a_base64_image_costs_a_fixed_1600_tokens_not_its_bytes() -> None:
    request = body({"type": "text", "text": "What is this?"}, image())
    assert input_tokens(request) == bytes_as_tokens(len(request) - len(IMAGE_DATA)) + 1600


def test_every_image_counts_wherever_it_is_nested() -> None:
    inside_a_tool_result = {"type": "tool_result", "tool_use_id": "t", "content": [image(), image("AAAA")]}
    request = body(image(), inside_a_tool_result)
    excluded = 2 * len(IMAGE_DATA) + len("AAAA")
    assert input_tokens(request) == bytes_as_tokens(len(request) - excluded) + 3 * 1600


def test_a_base64_document_costs_its_bytes() -> None:
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": IMAGE_DATA}}
    request = body(document)
    assert input_tokens(request) == bytes_as_tokens(len(request))


def test_the_word_base64_in_text_is_only_text() -> None:
    request = body({"type": "text", "text": "base64"})
    assert b'"base64"' in request  # so the body is searched for images, and none is found
    assert input_tokens(request) == bytes_as_tokens(len(request))


def test_worst_case_is_the_input_estimate_and_max_tokens_at_their_prices() -> None:
    assert worst_case_usd(PRICE, 1000, 200, caches=False) == (1000 * 3 + 200 * 15) / Decimal(1_000_000)


def test_a_request_that_may_write_the_cache_reserves_its_input_at_the_dearest_input_price() -> None:
    assert worst_case_usd(PRICE, 1000, 200, caches=True) == (1000 * 6 + 200 * 15) / Decimal(1_000_000)
    cheap_cache = replace(PRICE, cache_write_5m_per_mtok=Decimal(1), cache_write_1h_per_mtok=Decimal(2))
    assert worst_case_usd(cheap_cache, 1000, 200, caches=True) == worst_case_usd(PRICE, 1000, 200, caches=False)
