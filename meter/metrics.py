"""Every Prometheus metric meter exports, built on an injected registry (a fresh one per test).

Label values stay bounded: tenants beyond `max_tenant_labels` and models outside the price table
are reported as "other". Series whose label values are known in advance (limit reasons, upstream
error types, endpoints, round-trip purposes) exist from the start at 0, so a dashboard panel shows
0 rather than "No data" (Prometheus' instrumentation advice: avoid missing metrics).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Guard, Receive, Scope, Send
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_asgi_app,
    multiprocess,
    start_http_server,
)

from meter import __version__
from meter.db.models import LIMIT_SETTINGS
from meter.webhooks.events import EVENT_TYPES

# Set (by `meter serve --workers N`) when worker processes share their metrics through files.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# LLM calls run from tens of milliseconds to many minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# Why a limit refused a request: a limit setting, or prepaid credit (meter_reserve's reasons).
LIMIT_REASONS = (*LIMIT_SETTINGS, "credit", "tenant_in_flight")
# What went wrong upstream: meter's own observations, then the error types of Anthropic's 429 and 5xx
# answers; anything else is "other".
UPSTREAM_ERROR_TYPES = (
    "timeout",
    "unreachable",
    "upstream_disconnected",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
    "other",
)
AUTH_FAILURES = ("authentication_error", "permission_error", "rate_limit_error")
# Label children remembered by Metrics.child.
MAX_CHILDREN = 10_000
ROUND_TRIP_PURPOSES = ("key_lookup", "reserve", "lease", "lease_return", "ledger_batch")
# What became of one webhook delivery attempt: delivered (2xx), failed (retried later), or failed for
# the last time (the delivery is given up).
WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up")


class Metrics:
    def __init__(
        self, registry: CollectorRegistry, max_tenant_labels: int = 100, endpoints: Iterable[str] = ()
    ) -> None:
        # A `_created` series beside every counter doubles the series for nothing a dashboard uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self.max_tenant_labels = max_tenant_labels
        self._tenant_labels: set[str] = set()
        self._children: dict[tuple[Any, tuple[str | None, ...]], Any] = {}
        self.requests = Counter(
            "meter_requests_total",
            "Tenant requests by outcome",
            ["tenant", "model", "endpoint", "status"],
            registry=registry,
        )
        self.tokens = Counter("meter_tokens_total", "Tokens metered", ["tenant", "model", "kind"], registry=registry)
        self.cost = Counter("meter_cost_usd_total", "Cost metered, USD", ["tenant", "model"], registry=registry)
        self.unpriced = Counter(
            "meter_unpriced_requests_total", "Requests whose model has no price", ["model"], registry=registry
        )
        self.duration = Histogram(
            "meter_request_duration_seconds",
            "Time from request to last byte",
            ["endpoint", "stream"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "meter_time_to_first_token_seconds",
            "Time from request to the first streamed byte",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.limit_rejections = Counter(
            "meter_limit_rejections_total",
            "Requests refused by a limit, budget or credit",
            ["reason"],
            registry=registry,
        )
        # Read from Postgres every few seconds by each process; every process reports the same value.
        self.budget_used = Gauge(
            "meter_budget_used_ratio",
            "Share of a tenant's budget used in the current UTC period (1 = all of it)",
            ["tenant", "period"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.credit_balance = Gauge(
            "meter_credit_balance_usd",
            "A prepaid tenant's credit balance",
            ["tenant"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.upstream_errors = Counter(
            "meter_upstream_errors_total", "Upstream failures by type", ["type"], registry=registry
        )
        # Gauges say how to add up worker processes (`meter serve --workers N`).
        self.in_flight = Gauge(
            "meter_in_flight_requests", "Requests being served", registry=registry, multiprocess_mode="livesum"
        )
        self.auth_failures = Counter(
            "meter_auth_failures_total",
            "Tenant requests refused at authentication, by error type (rate_limit_error: the address failed too often)",
            ["type"],
            registry=registry,
        )
        self.shed = Counter(
            "meter_shed_requests_total",
            "Requests refused at once (529) because the process had as many in flight as it may",
            registry=registry,
        )
        self.db_round_trips = Counter(
            "meter_db_round_trips_total",
            "Round trips to Postgres made for requests: key lookups, reservations, ledger batches",
            ["purpose"],
            registry=registry,
        )
        self.ledger_pending = Gauge(
            "meter_ledger_queue_depth",
            "Ledger rows waiting to be written",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ledger_default_partition_rows = Gauge(
            "meter_ledger_default_partition_rows",
            "Ledger rows in the default partition: their month had no partition yet (should be 0)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.ledger_written = Counter("meter_ledger_rows_written_total", "Ledger rows written", registry=registry)
        self.ledger_dropped = Counter(
            "meter_ledger_rows_dropped_total", "Ledger rows Postgres refused (must stay 0)", registry=registry
        )
        self.ledger_write_seconds = Histogram(
            "meter_ledger_write_seconds",
            "Latency of one batched ledger write",
            buckets=WRITE_BUCKETS,
            registry=registry,
        )
        self.ledger_write_errors = Counter(
            "meter_ledger_write_errors_total", "Failed ledger batch writes (retried)", registry=registry
        )
        self.ledger_quarantined = Counter(
            "meter_ledger_rows_quarantined_total",
            "Ledger rows Postgres rejected, kept in usage_quarantine (or the spool's quarantine file)",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "meter_spool_bytes",
            "Bytes of the ledger's local spool files not yet known to be in Postgres",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.spool_write_errors = Counter(
            "meter_spool_write_errors_total",
            "Appends to the ledger's spool that failed (disk full, I/O error); new requests get 529 meanwhile",
            registry=registry,
        )
        self.spool_replayed = Counter(
            "meter_spool_replayed_rows_total",
            "Rows read back from the spool of a process that died, by kind (row: finished; unfinished: partial)",
            ["kind"],
            registry=registry,
        )
        self.batches_unbilled = Gauge(
            "meter_batches_unbilled",
            "Message batches whose results are not billed yet (in flight, or ended moments ago)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.batch_results_billed = Counter(
            "meter_batch_results_billed_total", "Ledger rows written for message batch results", registry=registry
        )
        self.batch_billing_errors = Counter(
            "meter_batch_billing_errors_total", "Failed rounds of message batch billing (retried)", registry=registry
        )
        # An info metric as a gauge: prometheus-client's Info does not work across processes.
        self.build = Gauge("meter_build_info", "meter version", ["version"], registry=registry, multiprocess_mode="max")
        self.build.labels(__version__).set(1)
        for reason in LIMIT_REASONS:
            self.limit_rejections.labels(reason)
        for kind in UPSTREAM_ERROR_TYPES:
            self.upstream_errors.labels(kind)
        for kind in AUTH_FAILURES:
            self.auth_failures.labels(kind)
        for purpose in ROUND_TRIP_PURPOSES:
            self.db_round_trips.labels(purpose)
        for endpoint in endpoints:
            for stream in ("true", "false"):
                self.duration.labels(endpoint, stream)
        # Reconciliation with the upstream's own reports (meter/reconcile): one process of a database
        # sets these. The drift is of yesterday and today (UTC), upstream minus ledger; models outside
        # the price table are "other", model-less cost lines keep their name, e.g. "(web_search)".
        self.reconcile_drift = Gauge(
            "meter_reconcile_drift_usd",
            "USD the upstream's cost report says minus what the ledger billed, yesterday and today (UTC)",
            ["model"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        # 0 until a process of this database has reconciled once; the newest success across processes.
        self.reconcile_last_success = Gauge(
            "meter_reconcile_last_success_timestamp_seconds",
            "When the ledger was last reconciled with the upstream's reports (Unix time; 0: not yet)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.reconcile_errors = Counter(
            "meter_reconcile_errors_total",
            "Reconciliations that failed (upstream reports or ledger unreadable); retried next interval",
            registry=registry,
        )

        # Webhooks (meter/webhooks): events emitted (one per event and webhook, across processes),
        # delivery attempts by outcome, and deliveries still to be made.
        self.webhook_events = Counter(
            "meter_webhook_events_total",
            "Webhook events emitted, one per event and webhook",
            ["type"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "meter_webhook_attempts_total", "Webhook delivery attempts, by outcome", ["outcome"], registry=registry
        )
        self.webhook_backlog = Gauge(
            "meter_webhook_backlog",
            "Webhook deliveries not delivered yet and not given up (due or waiting to be retried)",
            registry=registry,
            multiprocess_mode="max",
        )
        for event_type in EVENT_TYPES:
            self.webhook_events.labels(event_type)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_attempts.labels(outcome)

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.labels(kind if kind in UPSTREAM_ERROR_TYPES else "other").inc()

    def child(self, metric: Any, *values: str | None) -> Any:
        """`metric.labels(*values)`, remembered: prometheus-client checks and locks on every
        labels() call, and the recorder makes several per request. Forgetting a child loses nothing
        (the metric keeps it); the memory is bounded by clearing it."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            found = self._children[key] = metric.labels(*values)
        return found

    def tenant_label(self, tenant_id: str) -> str:
        if tenant_id in self._tenant_labels:
            return tenant_id
        if len(self._tenant_labels) < self.max_tenant_labels:
            self._tenant_labels.add(tenant_id)
            return tenant_id
        return "other"


def exposition_route(registry: CollectorRegistry, guards: list[Guard]) -> ASGIRouteHandler:
    """`GET /metrics` behind `guards` (the admin token): never public on the tenants' port."""
    exposition = make_asgi_app(exposed(registry))

    # Annotated wrapper: Litestar inspects handler signatures, and prometheus' app has none.
    async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
        await exposition(scope, receive, send)

    return asgi("/metrics", copy_scope=True, include_in_schema=False, guards=guards)(metrics)


def exposed(registry: CollectorRegistry | None) -> CollectorRegistry:
    """What a scrape reports: `registry`, or with several worker processes the sum of theirs."""
    if MULTIPROCESS_DIR in os.environ or registry is None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def serve_exposition(host: str, port: int, registry: CollectorRegistry | None) -> Callable[[], None]:
    """Serve /metrics without a token on host:port (METER_METRICS_ADDRESS), in a thread of this
    process: the worker's own with one worker, the parent's (summing the workers) with several.
    Returns the function that stops it."""
    server, thread = start_http_server(port, host, exposed(registry))

    def stop() -> None:
        server.shutdown()
        thread.join()

    return stop


def mark_process_dead() -> None:
    """A worker that stops: its live gauges leave the sum (`meter serve --workers N`)."""
    if MULTIPROCESS_DIR in os.environ:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
