"""How the answers of meter_reserve reach the tenant: Anthropic's rate-limit headers on a request
that fits, and on one that does not, the error, its retry advice and its message."""

from __future__ import annotations

from typing import Any

from meter.errors import InvalidRequest, RateLimited
from meter.proxy.auth import Caller
from meter.proxy.exchange import Exchange
from meter.proxy.handler import Answer
from meter.proxy.limits import ratelimit_lines, refusal_error
from meter.proxy.relay import send_answer

RESET = "2026-12-02T16:40:00.25+01:00"  # as Postgres renders a timestamptz in JSON
RESET_HEADER = "2026-12-02T15:40:01Z"  # in UTC, rounded up to the second


def headers_of(answer: dict[str, Any]) -> dict[str, str]:
    rendered = ratelimit_lines(answer).decode()
    assert rendered.endswith("\r\n")
    return dict(line.split(": ") for line in rendered.split("\r\n")[:-1])


def refusal(reason: str, **fields: Any) -> dict[str, Any]:
    return {"reason": reason, "subject": "ten_1", "limit": 10, "remaining": 0, "needed": 1, **fields}


def test_no_limits_no_headers() -> None:
    assert ratelimit_lines({"ok": True, "day": "2026-12-02", "month": "2026-12-01"}) == b""
    assert ratelimit_lines({"ok": True, "requests": None, "tokens": None}) == b""


def test_the_tightest_request_and_token_limits_become_anthropic_headers() -> None:
    answer = {
        "ok": True,
        "requests": {"limit": 60, "remaining": 58.7, "reset": RESET},
        "tokens": {"limit": 100000, "remaining": 99000, "reset": "2026-12-03T00:00:00+00:00"},
    }
    assert headers_of(answer) == {
        "anthropic-ratelimit-requests-limit": "60",
        "anthropic-ratelimit-requests-remaining": "58",
        "anthropic-ratelimit-requests-reset": RESET_HEADER,
        "anthropic-ratelimit-tokens-limit": "100000",
        "anthropic-ratelimit-tokens-remaining": "99000",
        "anthropic-ratelimit-tokens-reset": "2026-12-03T00:00:00Z",
    }


def test_remaining_is_never_negative() -> None:
    answer = {"ok": True, "tokens": {"limit": 10, "remaining": -3, "reset": RESET}}
    assert headers_of(answer)["anthropic-ratelimit-tokens-remaining"] == "0"


def test_requests_per_minute_refusal() -> None:
    error = refusal_error(refusal("requests_per_minute", remaining=0.4, retry_after=5.2, reset=RESET))
    assert isinstance(error, RateLimited)
    assert error.headers == {
        "retry-after": "6",  # rounded up: a client that waits that long finds the headroom
        "anthropic-ratelimit-requests-limit": "10",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": RESET_HEADER,
    }
    assert "rate limit of your organization of 10 requests per minute" in error.message
    assert "retry after 6 s" in error.message


def test_a_key_limit_names_the_api_key() -> None:
    error = refusal_error(refusal("requests_per_minute", subject="key_1", retry_after=1, reset=RESET))
    assert "your API key" in error.message


def test_a_request_larger_than_the_token_rate_limit_must_not_be_retried() -> None:
    fits_later = refusal_error(refusal("tokens_per_minute", limit=1000, needed=800, retry_after=20, reset=RESET))
    never_fits = refusal_error(refusal("tokens_per_minute", limit=1000, needed=1200, retry_after=20, reset=RESET))
    assert "x-should-retry" not in fits_later.headers
    assert fits_later.headers["anthropic-ratelimit-tokens-limit"] == "1000"
    assert never_fits.headers["x-should-retry"] == "false"
    assert "more than the per-minute limit of 1000" in never_fits.message


def test_past_a_minute_the_sdks_are_told_not_to_retry() -> None:
    within = refusal_error(refusal("max_concurrent_requests", limit=3, retry_after=60))
    beyond = refusal_error(refusal("requests_per_minute", retry_after=60.5, reset=RESET))
    assert within.headers == {"retry-after": "60"}
    assert (beyond.headers["retry-after"], beyond.headers["x-should-retry"]) == ("61", "false")
    assert "already has 3 requests in flight" in within.message


def test_retry_after_is_at_least_a_second() -> None:
    assert refusal_error(refusal("max_concurrent_requests", retry_after=0.01)).headers["retry-after"] == "1"
    assert refusal_error(refusal("max_concurrent_requests")).headers["retry-after"] == "1"


def test_period_token_limits_carry_token_headers() -> None:
    error = refusal_error(refusal("tokens_per_day", limit=50, remaining=20, needed=105, retry_after=3600, reset=RESET))
    assert isinstance(error, RateLimited)
    assert error.headers["anthropic-ratelimit-tokens-limit"] == "50"
    assert error.headers["anthropic-ratelimit-tokens-remaining"] == "20"
    assert error.headers["x-should-retry"] == "false"
    assert error.message == (
        "This request would exceed the daily token limit of your organization: "
        "20 tokens remain and this request may use up to 105. "
        "That is more than the whole daily token limit, so it cannot succeed as it is."
    )


def test_a_request_larger_than_a_whole_period_limit_is_not_retried_even_just_before_the_reset() -> None:
    # 30 s before UTC midnight: a request that fits a fresh day may retry, one that never fits may not.
    fits = refusal_error(refusal("budget_usd_per_day", limit="1.00", remaining="0.01", needed="0.50", retry_after=30))
    never = refusal_error(refusal("budget_usd_per_day", limit="1.00", remaining="0.01", needed="2.50", retry_after=30))
    assert "x-should-retry" not in fits.headers and fits.headers["retry-after"] == "30"
    assert never.headers["x-should-retry"] == "false"
    assert "more than the whole daily budget" in never.message


def test_budgets_speak_dollars_and_carry_no_token_headers() -> None:
    error = refusal_error(
        refusal("budget_usd_per_month", limit="5.00", remaining="0.0100", needed="0.0150", retry_after=86400)
    )
    assert isinstance(error, RateLimited)
    assert error.headers == {"retry-after": "86400", "x-should-retry": "false"}
    assert error.message == (
        "This request would exceed the monthly budget of your organization: "
        "$0.01 remains and this request may cost up to $0.015."
    )


def test_low_credit_is_an_invalid_request_not_a_rate_limit() -> None:
    error = refusal_error(refusal("credit", limit="1.00", remaining="0.002000", needed="0.0150"))
    assert isinstance(error, InvalidRequest)
    assert error.headers == {}
    assert "$0.002 remains and this request may cost up to $0.015" in error.message


async def test_where_the_server_does_not_take_head_lines_they_are_sent_as_headers() -> None:
    lines = ratelimit_lines({"ok": True, "requests": {"limit": 60, "remaining": 58.7, "reset": RESET}})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    spliced: list[bytes] = []
    for add_head_lines in (None, spliced.append):
        exchange = Exchange("req_1", Caller("key_1", "ten_1", None), "messages", True)
        exchange.ratelimit_lines, exchange.add_head_lines = lines, add_head_lines
        await send_answer(exchange, Answer(200, b"{}"), send)
    plain, taken = (dict(message["headers"]) for message in sent[::2])
    assert plain[b"anthropic-ratelimit-requests-limit"] == b"60"
    assert plain[b"anthropic-ratelimit-requests-remaining"] == b"58"
    assert plain[b"anthropic-ratelimit-requests-reset"] == RESET_HEADER.encode()
    assert not any(name.startswith(b"anthropic-ratelimit-") for name in taken) and spliced == [lines]
