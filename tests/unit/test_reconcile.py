"""The reconciliation's comparison, without I/O: drift per bucket, what is not compared (code
execution, the priority tier, unpriced rows' cost), the threshold, the gauges the job sets, and its
settings."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from meter.metrics import Metrics
from meter.pricing import Price, PriceTable, TokenPrices
from meter.reconcile.job import publish
from meter.reconcile.report import KINDS, LedgerSide, Side, compare, cost_line, fee_line
from meter.settings import ConfigError, Settings

D = Decimal
DAY = date(2026, 12, 2)
THRESHOLD = D("0.01")


def side(usd: str = "0", **counts: int) -> Side:
    return Side(counts={**dict.fromkeys(KINDS, 0), **counts}, usd=D(usd))


def ledger(usd: str = "0", priority_usd: str = "0", **counts: int) -> LedgerSide:
    return LedgerSide(
        counts={**dict.fromkeys(KINDS, 0), **counts}, usd=D(usd), requests=1, priced=True, priority_usd=D(priority_usd)
    )


def test_drift_is_upstream_minus_ledger_per_counter_and_usd() -> None:
    report = compare(
        DAY,
        date(2026, 12, 3),
        THRESHOLD,
        {(DAY, "m"): side("0.50", output_tokens=120, web_search_requests=2)},
        {(DAY, "m"): ledger("0.48", output_tokens=100, web_search_requests=2)},
    )
    (bucket,) = report.buckets
    assert bucket.drift() == {**dict.fromkeys(KINDS, 0), "output_tokens": 20}
    assert bucket.usd_drift == D("0.02") and bucket.over(THRESHOLD)
    assert report.summary() == (
        "1 buckets from 2026-12-02 to 2026-12-03 (exclusive): 1 over the $0.01 threshold: 2026-12-02 m (+$0.02)"
    )
    assert report.as_json()["over_threshold"] == [{"day": "2026-12-02", "model": "m"}]


def test_a_drift_at_the_threshold_is_within_it() -> None:
    report = compare(DAY, DAY, THRESHOLD, {(DAY, "m"): side("1.00")}, {(DAY, "m"): ledger("1.01")})
    assert report.buckets[0].usd_drift == D("-0.01") and not report.over_threshold
    assert "every USD drift within $0.01" in report.summary()


def test_buckets_either_side_lacks_are_all_drift() -> None:
    report = compare(
        DAY, DAY, THRESHOLD, {(DAY, "a"): side("0.02", uncached_input_tokens=5)}, {(DAY, "b"): ledger("0.03")}
    )
    assert [(b.model, b.usd_drift) for b in report.buckets] == [("a", D("0.02")), ("b", D("-0.03"))]
    assert report.buckets[0].ledger.requests == 0 and report.buckets[0].drift()["uncached_input_tokens"] == 5


def test_unpriced_rows_are_not_zero_dollars() -> None:
    unpriced = LedgerSide(counts={**dict.fromkeys(KINDS, 0), "output_tokens": 7}, requests=2, unpriced_requests=2)
    report = compare(DAY, DAY, THRESHOLD, {(DAY, "m"): side("0", output_tokens=7)}, {(DAY, "m"): unpriced})
    (bucket,) = report.buckets
    as_json = bucket.as_json(THRESHOLD)
    assert as_json["ledger"]["usd"] is None and as_json["ledger"]["unpriced_requests"] == 2
    assert bucket.row(THRESHOLD)["ledger_usd"] == "unpriced" and "2 unpriced rows" in bucket.notes()
    # What the upstream charged for them is drift: money the tenants were not billed.
    charged = compare(DAY, DAY, THRESHOLD, {(DAY, "m"): side("0.40", output_tokens=7)}, {(DAY, "m"): unpriced})
    assert charged.buckets[0].usd_drift == D("0.40") and charged.over_threshold


def test_what_meter_does_not_meter_is_shown_and_not_compared() -> None:
    code = cost_line("code_execution")
    report = compare(DAY, DAY, THRESHOLD, {(DAY, code): side("5")}, {})
    (bucket,) = report.buckets
    assert bucket.model == "(code_execution)" and bucket.usd_drift is None and not report.over_threshold
    assert bucket.as_json(THRESHOLD)["drift"]["usd"] is None and "not metered by meter" in bucket.notes()
    priority = ledger("0", priority_usd="0.30")
    assert (
        "priority tier $0.30 not compared"
        in compare(DAY, DAY, THRESHOLD, {}, {(DAY, "m"): priority}).buckets[0].notes()
    )


def test_fees_go_to_the_cost_reports_model_less_lines() -> None:
    assert fee_line("web_search_requests") == cost_line("web_search") == "(web_search)"
    assert fee_line("future_fee") == "(future_fee)"


def test_the_gauges_bound_their_labels_and_reset_what_is_gone() -> None:
    metrics = Metrics(CollectorRegistry())
    prices = PriceTable([Price("claude-haiku-4-5", datetime(2025, 1, 1, tzinfo=UTC), TokenPrices(*[D(1)] * 5))])
    seen: set[str] = set()
    report = compare(
        DAY,
        DAY,
        THRESHOLD,
        {(DAY, "claude-haiku-4-5"): side("1.5"), (DAY, "x-1"): side("1"), (DAY, "x-2"): side("2")},
        {(DAY, "(web_search)"): ledger("0.25")},
    )
    publish(report, metrics, prices, seen)

    def gauge(label: str) -> float | None:
        return metrics.registry.get_sample_value("meter_reconcile_drift_usd", {"model": label})

    assert (gauge("claude-haiku-4-5"), gauge("other"), gauge("(web_search)")) == (1.5, 3.0, -0.25)
    assert gauge("x-1") is None
    assert (metrics.registry.get_sample_value("meter_reconcile_last_success_timestamp_seconds") or 0) > 0
    publish(compare(DAY, DAY, THRESHOLD, {}, {}), metrics, prices, seen)
    assert (gauge("claude-haiku-4-5"), gauge("other"), gauge("(web_search)")) == (0, 0, 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [("METER_RECONCILE_DRIFT_USD", "abc"), ("METER_RECONCILE_DRIFT_USD", "-1"), ("METER_RECONCILE_INTERVAL_S", "0")],
)
def test_bad_reconcile_settings_are_one_line_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_reconcile_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "METER_UPSTREAM_ADMIN_KEY": "sk-ant-admin-x",
            "METER_RECONCILE_DRIFT_USD": "0.05",
            "METER_RECONCILE_INTERVAL_S": "60",
        }
    )
    assert settings.reconcile_drift_usd == D("0.05") and settings.reconcile_interval_s == 60
    assert "sk-ant-admin-x" not in repr(settings)
    assert Settings().reconcile_drift_usd == D("0.01") and Settings().upstream_admin_key is None
