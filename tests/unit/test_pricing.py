"""Exact costs from the price table, and usage merging."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from meter.pricing import Price, PriceTable
from meter.usage import Usage

JAN = datetime(2026, 1, 1, tzinfo=UTC)
JUN = datetime(2026, 6, 1, tzinfo=UTC)


def price(model: str, start: datetime, scale: str = "1") -> Price:
    s = Decimal(scale)
    return Price(model, start, 3 * s, 15 * s, Decimal("3.75") * s, 6 * s, Decimal("0.30") * s)


def test_cost_is_exact_to_the_last_digit() -> None:
    usage = Usage(input_tokens=7, output_tokens=3, cache_creation_input_tokens=11, cache_read_input_tokens=13)
    usage.cache_creation_5m_input_tokens, usage.cache_creation_1h_input_tokens = 5, 6
    cost = price("m", JAN).cost(usage)
    assert cost == Decimal("0.00012465")  # (21 + 45 + 18.75 + 36 + 3.9) / 1e6
    assert isinstance(cost, Decimal)


def test_writes_without_split_are_5m() -> None:
    usage = Usage(cache_creation_input_tokens=1_000_000)
    assert usage.cache_write_split() == (1_000_000, 0)
    assert price("m", JAN).cost(usage) == Decimal("3.75")


def test_price_in_effect_at_start_time() -> None:
    table = PriceTable([price("m", JUN, "2"), price("m", JAN)])
    usage = Usage(output_tokens=1_000_000)
    assert table.cost("m", datetime(2025, 12, 31, tzinfo=UTC), usage) is None
    assert table.cost("m", datetime(2026, 3, 1, tzinfo=UTC), usage) == Decimal(15)
    assert table.cost("m", JUN, usage) == Decimal(30)
    assert table.cost("unknown", JUN, usage) is None
    assert table.knows("m") and not table.knows("unknown") and not table.knows(None)


def test_later_reports_override_fields_they_carry() -> None:
    usage = Usage()
    usage.update({"input_tokens": 19, "output_tokens": 1, "cache_creation": {"ephemeral_1h_input_tokens": 4}})
    usage.update({"output_tokens": 87, "cache_creation_input_tokens": 10})
    usage.update("not a dict")
    assert (usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens) == (19, 87, 10)
    assert usage.cache_write_split() == (6, 4)
    assert usage.total_tokens == 116
