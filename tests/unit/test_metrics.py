"""Metric names and bounded labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from meter.metrics import DURATION_BUCKETS, Metrics


def test_tenant_labels_are_capped() -> None:
    metrics = Metrics(CollectorRegistry(), max_tenant_labels=2)
    assert [metrics.tenant_label(t) for t in ("ten_a", "ten_b", "ten_c", "ten_a", "ten_d")] == [
        "ten_a",
        "ten_b",
        "other",
        "ten_a",
        "other",
    ]


def test_names_follow_prometheus_conventions() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.requests.labels("t", "m", "messages", "200").inc()
    text = generate_latest(registry).decode()
    kinds = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    assert kinds and all(name.startswith("meter_") for name in kinds)
    # prometheus-client names every counter `..._total` by itself; a gauge or a histogram so named
    # would read as a counter on a dashboard.
    assert [name for name, kind in kinds.items() if kind != "counter" and name.endswith("_total")] == []
    # Every histogram here measures time, in the base unit.
    assert [name for name, kind in kinds.items() if kind == "histogram" and not name.endswith("_seconds")] == []
    assert "_created" not in text
    assert "meter_requests_total{" in text
    assert DURATION_BUCKETS[0] == 0.05 and DURATION_BUCKETS[-1] == 600
