"""The last stage of the request path: what one request did becomes one ledger row and metrics."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

from meter.db.rows import LedgerRow
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.pricing import PriceTable
from meter.proxy.exchange import Exchange

# Stop reasons, error types and request ids are short; an upstream that sends more is cut.
MAX_TEXT = 256


class Recorder:
    def __init__(self, ledger: LedgerWriter, prices: PriceTable, metrics: Metrics) -> None:
        self.ledger = ledger
        self.prices = prices
        self._metrics = metrics

    def record(self, exchange: Exchange) -> None:
        duration = time.perf_counter() - exchange.started
        cost = self._cost(exchange)
        hold = exchange.hold
        settlement = hold.settlement(exchange.usage.total_tokens, cost) if hold else None
        self.ledger.record(_row(exchange, duration, cost), settlement)
        self._observe(exchange, duration, cost)

    def _cost(self, exchange: Exchange) -> Decimal | None:
        usage = exchange.usage
        if not exchange.billed or usage.total_tokens == 0:
            return Decimal(0)
        # The model the tenant asked for; else the one the upstream answered with (an alias
        # may resolve to a dated snapshot that has the price).
        for model in (exchange.model, exchange.response_model):
            cost = self.prices.cost(model, exchange.started_at, usage)
            if cost is not None:
                return cost
        return None

    def _observe(self, exchange: Exchange, duration: float, cost: Decimal | None) -> None:
        m = self._metrics
        tenant = m.tenant_label(exchange.caller.tenant_id)
        model = exchange.model if self.prices.knows(exchange.model) else "other"
        m.requests.labels(tenant, model, exchange.endpoint, str(exchange.status)).inc()
        m.duration.labels(exchange.endpoint, "true" if exchange.stream else "false").observe(duration)
        if exchange.stream and exchange.ttfb_s is not None:
            m.ttft.labels(model).observe(exchange.ttfb_s)
        usage = exchange.usage
        five_minute, one_hour = usage.cache_write_split()
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_write_5m", five_minute),
            ("cache_write_1h", one_hour),
            ("cache_read", usage.cache_read_input_tokens),
        ):
            if count:
                m.tokens.labels(tenant, model, kind).inc(count)
        if exchange.upstream_error:
            m.upstream_error(exchange.upstream_error)
        if cost is None:
            m.unpriced.labels(model).inc()
        elif cost:
            m.cost.labels(tenant, model).inc(float(cost))


def _row(exchange: Exchange, duration: float, cost: Decimal | None) -> LedgerRow:
    usage = exchange.usage
    five_minute, one_hour = usage.cache_write_split()
    return LedgerRow(
        request_id=exchange.request_id,
        tenant_id=exchange.caller.tenant_id,
        key_id=exchange.caller.key_id,
        model=exchange.model,
        endpoint=exchange.endpoint,
        stream=exchange.stream,
        status=exchange.status,
        error_type=_text(exchange.error_type),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_creation_5m_input_tokens=five_minute,
        cache_creation_1h_input_tokens=one_hour,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        cost_usd=cost,
        partial=exchange.partial,
        stop_reason=_text(exchange.stop_reason),
        upstream_request_id=_text(exchange.upstream_request_id),
        started_at=exchange.started_at,
        finished_at=exchange.started_at + timedelta(seconds=duration),
        duration_ms=round(duration * 1000),
        ttfb_ms=None if exchange.ttfb_s is None else round(exchange.ttfb_s * 1000),
    )


def _text(value: object) -> str | None:
    """A string the upstream sent, as the ledger can store it whatever it was: no NUL, bounded."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "")[:MAX_TEXT]
