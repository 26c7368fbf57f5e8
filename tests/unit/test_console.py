"""The console's pure parts: the session cookie's signature and expiry, the usage chart's scale and
stacking, and how a refusal is worded on the page."""

from __future__ import annotations

import time
from datetime import date
from decimal import Decimal

import msgspec
import pytest

from meter.admin.limits import LimitsSpec
from meter.admin.usage import DayModelUsage
from meter.console import forms
from meter.console.charts import PALETTE, nice_ceiling, stacked_by_day
from meter.console.session import Session, SessionSigner
from meter.errors import InvalidRequest

PEPPER, TOKEN = "p" * 32, "t" * 32


def test_a_session_reads_back_only_under_the_same_pepper_and_admin_token() -> None:
    signer = SessionSigner(PEPPER, TOKEN, 60)
    session = signer.new(signed_in=True)
    cookie = signer.dump(session)
    assert signer.load(cookie) == session
    assert SessionSigner(PEPPER, "u" * 32, 60).load(cookie) is None  # a new admin token signs everyone out
    assert SessionSigner("q" * 32, TOKEN, 60).load(cookie) is None
    payload, _, mac = cookie.partition(".")
    assert signer.load(payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + mac) is None
    for junk in (None, "", ".", "a.b", cookie + "x", "x" * 2000):
        assert signer.load(junk) is None


def test_a_session_ends_at_its_expiry() -> None:
    signer = SessionSigner(PEPPER, TOKEN, 60)
    ended = Session(csrf="c", expires=int(time.time()) - 1, signed_in=True)
    assert signer.load(signer.dump(ended)) is None
    assert 3500 < signer.new(signed_in=False).ttl_s() <= 3600  # long enough to fill in the sign-in form
    assert 50 < signer.new(signed_in=True).ttl_s() <= 60  # METER_CONSOLE_SESSION_S


def test_every_new_session_has_its_own_csrf_token() -> None:
    signer = SessionSigner(PEPPER, TOKEN, 60)
    assert len({signer.new(signed_in=True).csrf for _ in range(100)}) == 100


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [("0", "1"), ("0.000992", "0.001"), ("0.0011", "0.002"), ("3", "5"), ("7.2", "10"), ("21", "25"), ("100", "100")],
)
def test_the_chart_scale_is_a_round_number_at_or_above_the_top(value: str, ceiling: str) -> None:
    assert nice_ceiling(Decimal(value)) == Decimal(ceiling)


def usage(day: int, model: str, cost: str, tokens: int = 10) -> DayModelUsage:
    return DayModelUsage(date(2026, 12, day), model, 1, tokens, 0, 0, 0, cost, 0)


def test_bars_stack_per_day_with_a_colour_per_model_largest_first() -> None:
    rows = [usage(1, "small", "1"), usage(1, "big", "3"), usage(3, "big", "4")]
    chart = stacked_by_day(rows, date(2026, 12, 1), date(2026, 12, 4), "cost")
    assert [model for _, model in chart.legend] == ["big", "small"]
    assert [bar.color for bar in chart.bars] == [PALETTE[0], PALETTE[1], PALETTE[0]]
    first, second, third = chart.bars
    # Day 1: "big" sits on the baseline, "small" on top of it; heights are in proportion.
    assert first.y + first.height == pytest.approx(chart.baseline)
    assert second.y + second.height == pytest.approx(first.y)
    assert first.height == pytest.approx(3 * second.height)
    assert third.x > first.x and third.height == pytest.approx(4 * second.height)
    assert third.title == "2026-12-03 · big: $4.00"


def test_a_range_without_usage_draws_no_bar() -> None:
    chart = stacked_by_day([], date(2026, 12, 1), date(2026, 12, 31), "tokens")
    assert chart.empty and not chart.bars and len(chart.days) <= 8


def test_refusals_name_the_field_as_the_form_labels_it() -> None:
    with pytest.raises(msgspec.ValidationError) as refused:
        forms.convert({"requests_per_minute": -1}, LimitsSpec)
    assert forms.message(refused.value) == "Requests per minute: expected `int` >= 0"
    assert forms.message(InvalidRequest("amount_usd: must not be zero")) == "Amount (USD): must not be zero"
    assert forms.message(InvalidRequest("No tenant with id 'x'.")) == "No tenant with id 'x'."
