"""The last stage of the request path: what one request did becomes one ledger row and metrics."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

from meter.db.rows import LedgerRow
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.money import decimal_text
from meter.pricing import Cost, PriceTable
from meter.proxy.exchange import Exchange

# Stop reasons, error types and request ids are short; an upstream that sends more is cut.
MAX_TEXT = 256
FREE = Cost(Decimal(0), {}, False)


class Recorder:
    def __init__(self, ledger: LedgerWriter, prices: PriceTable, metrics: Metrics) -> None:
        self.ledger = ledger
        self.prices = prices
        self._metrics = metrics

    def record(self, exchange: Exchange) -> None:
        duration = time.perf_counter() - exchange.started
        _complete(exchange)
        cost = self._cost(exchange)
        total = None if cost is None else cost.total
        hold = exchange.hold
        settlement = hold.settlement(exchange.usage.total_tokens, total) if hold else None
        self.ledger.record(_row(exchange, duration, cost), settlement)
        self._observe(exchange, duration, total)

    def _cost(self, exchange: Exchange) -> Cost | None:
        usage = exchange.usage
        if not exchange.billed or (usage.total_tokens == 0 and not usage.server_tool_use):
            return FREE
        price = self.prices.price_of_call(exchange.model, exchange.response_model, exchange.started_at)
        return None if price is None else price.cost(usage)

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


def _complete(exchange: Exchange) -> None:
    """What the answer left out of the usage, from the request: a fast or geo-pinned call whose
    reply does not say how it ran is billed as it asked; cache writes of unknown TTL at 1h when it
    asked for a 1h cache."""
    usage, shape = exchange.usage, exchange.shape
    if shape is None:
        return
    usage.writes_default_1h = shape.cache_1h
    usage.speed = usage.speed or shape.speed
    if usage.inference_geo is None and shape.inference_geo is not None:
        usage.inference_geo = shape.inference_geo


def _row(exchange: Exchange, duration: float, cost: Cost | None) -> LedgerRow:
    usage = exchange.usage
    counters = usage.billed_counters()
    return LedgerRow(
        request_id=exchange.request_id,
        tenant_id=exchange.caller.tenant_id,
        key_id=exchange.caller.key_id,
        model=exchange.model,
        endpoint=exchange.endpoint,
        stream=exchange.stream,
        status=exchange.status,
        error_type=_text(exchange.error_type),
        **counters,
        server_tool_use=usage.server_tool_use or None,
        service_tier=_text(usage.service_tier),
        inference_geo=_text(usage.inference_geo),
        speed=_text(usage.speed),
        iterations=usage.iterations,
        usage_extra=usage.extra or None,
        response_model=_text(exchange.response_model),
        cost_usd=None if cost is None else cost.total,
        fees={name: {"units": units, "usd": decimal_text(usd)} for name, (units, usd) in cost.fees.items()}
        if cost is not None and cost.fees
        else None,
        long_context=cost is not None and cost.long_context,
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
