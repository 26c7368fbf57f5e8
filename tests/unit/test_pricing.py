"""Exact costs from the price model (token prices, fees, multipliers, long context, iterations), and
usage merging. Every expected figure is worked out by hand in its comment."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from meter.pricing import LongContext, Price, PriceTable, TokenPrices
from meter.usage import Usage

JAN = datetime(2026, 1, 1, tzinfo=UTC)
JUN = datetime(2026, 6, 1, tzinfo=UTC)
D = Decimal


def tokens(scale: str = "1") -> TokenPrices:
    s = D(scale)
    return TokenPrices(3 * s, 15 * s, D("3.75") * s, 6 * s, D("0.30") * s)


def price(model: str = "m", start: datetime = JAN, scale: str = "1") -> Price:
    return Price(model, start, tokens(scale))


SONNET = Price(
    "claude-sonnet-4-5",
    JAN,
    tokens(),
    server_tool_fees={"web_search_requests": D("0.01")},
    multipliers={"inference_geo": {"us": D("1.1")}, "service_tier": {"batch": D("0.5")}, "speed": {"fast": D(2)}},
    long_context=LongContext(200_000, TokenPrices(D(6), D("22.5"), D("7.5"), D(12), D("0.6"))),
    context_window=1_000_000,
)


def test_cost_is_exact_to_the_last_digit() -> None:
    usage = Usage(input_tokens=7, output_tokens=3, cache_creation_input_tokens=11, cache_read_input_tokens=13)
    usage.cache_creation_5m_input_tokens, usage.cache_creation_1h_input_tokens = 5, 6
    cost = price().cost(usage)
    assert cost.total == D("0.00012465")  # (21 + 45 + 18.75 + 36 + 3.9) / 1e6
    assert isinstance(cost.total, Decimal) and cost.fees == {} and not cost.long_context


def test_writes_without_split_are_5m_unless_the_request_asked_for_1h() -> None:
    usage = Usage(cache_creation_input_tokens=1_000_000)
    assert usage.cache_write_split() == (1_000_000, 0)
    assert price().cost(usage).total == D("3.75")
    usage.writes_default_1h = True
    assert usage.cache_write_split() == (0, 1_000_000)
    assert price().cost(usage).total == D(6)


def test_writes_a_delta_adds_to_the_known_split_go_to_the_costlier_ttl_when_1h_was_asked_for() -> None:
    usage = Usage()
    usage.update(
        {
            "cache_creation_input_tokens": 100,
            "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60},
        }
    )
    usage.update({"cache_creation_input_tokens": 150})  # message_delta: 50 more, no split
    assert usage.cache_write_split() == (90, 60)
    usage.writes_default_1h = True
    assert usage.cache_write_split() == (40, 110)


def test_web_search_is_billed_per_search_beside_the_tokens() -> None:
    usage = Usage(input_tokens=1000, output_tokens=50, server_tool_use={"web_search_requests": 3})
    cost = SONNET.cost(usage)
    # tokens: (1000 x 3 + 50 x 15) / 1e6 = 0.00375; searches: 3 x 0.01 = 0.03
    assert cost.total == D("0.03375")
    assert cost.fees == {"web_search_requests": (3, D("0.03"))}


def test_a_server_tool_without_a_fee_costs_nothing_extra() -> None:
    usage = Usage(output_tokens=1_000_000, server_tool_use={"web_fetch_requests": 4})
    assert SONNET.cost(usage).total == D(15) and SONNET.cost(usage).fees == {}


def test_geo_tier_and_speed_multiply_every_token_price_but_not_fees() -> None:
    usage = Usage(input_tokens=100_000, output_tokens=1_000_000, server_tool_use={"web_search_requests": 1})
    usage.inference_geo, usage.service_tier, usage.speed = "us", "batch", "fast"
    # (0.3 + 15) x 1.1 x 0.5 x 2 = 16.83, + 0.01
    assert SONNET.cost(usage).total == D("16.84")
    usage.inference_geo, usage.service_tier, usage.speed = "global", "standard", "standard"
    assert SONNET.cost(usage).total == D("15.31")


def test_long_context_prices_apply_to_every_token_of_a_step_past_the_threshold() -> None:
    at = Usage(input_tokens=150_000, cache_read_input_tokens=50_000, output_tokens=1000)
    past = Usage(input_tokens=150_001, cache_read_input_tokens=50_000, output_tokens=1000)
    # at the threshold: 150,000 x 3 + 50,000 x 0.3 + 1000 x 15 = 480,000 micro-dollars
    assert SONNET.cost(at).total == D("0.48") and not SONNET.cost(at).long_context
    # past it: 150,001 x 6 + 50,000 x 0.6 + 1000 x 22.5 = 952,506 micro-dollars
    assert SONNET.cost(past).total == D("0.952506") and SONNET.cost(past).long_context


def test_iterations_are_billed_as_the_sum_of_their_steps() -> None:
    usage = Usage()
    usage.update(
        {
            "input_tokens": 23_000,
            "output_tokens": 1000,
            "iterations": [
                {"type": "compaction", "input_tokens": 180_000, "output_tokens": 3500},
                {"type": "message", "input_tokens": 23_000, "output_tokens": 1000},
            ],
        }
    )
    # each step priced alone: 180,000 x 3 + 3500 x 15 + 23,000 x 3 + 1000 x 15 = 676,500 micro-dollars
    assert SONNET.cost(usage).total == D("0.6765")
    assert usage.billed_counters()["input_tokens"] == 203_000 and usage.total_tokens == 207_500


def test_price_in_effect_at_start_time() -> None:
    table = PriceTable([price("m", JUN, "2"), price("m", JAN)])
    usage = Usage(output_tokens=1_000_000)
    assert table.cost("m", datetime(2025, 12, 31, tzinfo=UTC), usage) is None
    assert table.cost("m", datetime(2026, 3, 1, tzinfo=UTC), usage) == D(15)
    assert table.cost("m", JUN, usage) == D(30)
    assert table.cost("unknown", JUN, usage) is None
    assert table.knows("m") and not table.knows("unknown") and not table.knows(None)


def test_a_call_is_priced_by_its_requested_model_else_its_answered_one() -> None:
    table = PriceTable([price("claude-alias", JAN), price("claude-dated-20260101", JAN, "2")])
    assert table.price_of_call("claude-alias", "claude-dated-20260101", JUN) == price("claude-alias", JAN)
    assert table.price_of_call("unpriced", "claude-dated-20260101", JUN) == price("claude-dated-20260101", JAN, "2")
    assert table.price_of_call("unpriced", None, JUN) is None


def test_prices_round_trip_through_their_row_form() -> None:
    assert Price.from_row(SONNET.as_row()) == SONNET
    assert Price.from_row(price().as_row()) == replace(price(), server_tool_fees={}, multipliers={})


def test_later_reports_override_fields_they_carry_and_unknown_fields_are_kept() -> None:
    usage = Usage()
    usage.update(
        {
            "input_tokens": 19,
            "output_tokens": 1,
            "cache_creation": {"ephemeral_1h_input_tokens": 4},
            "service_tier": "standard",
            "new_fee_units": 7,
        }
    )
    usage.update(
        {"output_tokens": 87, "cache_creation_input_tokens": 10, "server_tool_use": {"web_search_requests": 2}}
    )
    usage.update("not a dict")
    usage.update({"output_tokens": -5, "input_tokens": True})  # not counts: ignored
    assert (usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens) == (19, 87, 10)
    assert usage.cache_write_split() == (6, 4)
    assert usage.total_tokens == 116
    assert usage.service_tier == "standard" and usage.server_tool_use == {"web_search_requests": 2}
    assert usage.extra == {"new_fee_units": 7}
