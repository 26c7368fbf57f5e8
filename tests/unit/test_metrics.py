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
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert families and all(name.startswith("meter_") for name in families)
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total")
    assert "_created" not in text
    assert "meter_requests_total{" in text
    assert DURATION_BUCKETS[0] == 0.05 and DURATION_BUCKETS[-1] == 600
