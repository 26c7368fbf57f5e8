"""The last stage of the request path: what one request did becomes one ledger row and metrics."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

from meter.db.rows import LedgerRow, billed_columns, stored_text
from meter.ledger import LedgerWriter
from meter.metrics import Metrics
from meter.pricing import FREE, Cost, PriceTable
from meter.proxy.estimate import likely_input_tokens
from meter.proxy.exchange import Exchange
from meter.usage import Usage


class Recorder:
    def __init__(self, ledger: LedgerWriter, prices: PriceTable, metrics: Metrics) -> None:
        self.ledger = ledger
        self.prices = prices
        self._metrics = metrics

    def started(self, exchange: Exchange) -> bool:
        """Spool the row `exchange` gets if meter dies before it finishes: partial, at the input its
        body most likely has, settling its hold. False if the spool cannot take it."""
        estimate = Usage()
        if exchange.billed and exchange.shape is not None:
            estimate.input_tokens = likely_input_tokens(exchange.shape)
        exchange.estimate = estimate
        _complete(exchange, estimate)
        tokens = estimate.total_tokens
        cost = self._cost(exchange, estimate, tokens)
        row = _row(exchange, 0.0, estimate, cost, interrupted=True)
        hold = exchange.hold
        settlement = hold.settlement(tokens, _usd(cost)) if hold is not None else None
        return self.ledger.record_start(row, settlement)

    def record(self, exchange: Exchange) -> None:
        duration = time.perf_counter() - exchange.started
        if exchange.cancelled:
            # It saw what it saw: never 0 tokens and $0 for a call the upstream may bill.
            exchange.partial = True
            exchange.error_type = exchange.error_type or "cancelled"
            if exchange.usage.total_tokens == 0 and exchange.estimate is not None:
                exchange.usage = exchange.estimate
        usage = exchange.usage
        _complete(exchange, usage)
        tokens = usage.total_tokens
        cost = self._cost(exchange, usage, tokens)
        usd = _usd(cost)
        hold, settlement = exchange.hold, None
        if hold is not None:
            exchange.giving_back = hold.end(tokens, usd)
            settlement = hold.settlement(tokens, usd)
        self.ledger.record(_row(exchange, duration, usage, cost), settlement)
        # Metrics after the answer's last bytes are sent (the caller sends them next), not before.
        asyncio.get_running_loop().call_soon(self._observe, exchange, duration, usd)

    def _cost(self, exchange: Exchange, usage: Usage, tokens: int) -> Cost | None:
        if not exchange.billed or (tokens == 0 and not usage.server_tool_use):
            return FREE
        price = self.prices.price_of_call(exchange.model, exchange.response_model, exchange.started_at)
        return None if price is None else price.cost(usage)

    def _observe(self, exchange: Exchange, duration: float, cost: Decimal | None) -> None:
        m = self._metrics
        tenant = m.tenant_label(exchange.caller.tenant_id)
        model = exchange.model if self.prices.knows(exchange.model) else "other"
        m.child(m.requests, tenant, model, exchange.endpoint, str(exchange.status)).inc()
        m.child(m.duration, exchange.endpoint, "true" if exchange.stream else "false").observe(duration)
        if exchange.stream and exchange.ttfb_s is not None:
            m.child(m.ttft, model).observe(exchange.ttfb_s)
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
                m.child(m.tokens, tenant, model, kind).inc(count)
        if exchange.upstream_error:
            m.upstream_error(exchange.upstream_error)
        if cost is None:
            m.child(m.unpriced, model).inc()
        elif cost:
            m.child(m.cost, tenant, model).inc(float(cost))


def _usd(cost: Cost | None) -> Decimal | None:
    """What a call cost in USD; None if its model has no price."""
    return None if cost is None else cost.total


def _complete(exchange: Exchange, usage: Usage) -> None:
    """What the answer left out of the usage, from the request: a fast or geo-pinned call whose
    reply does not say how it ran is billed as it asked; cache writes of unknown TTL at 1h when it
    asked for a 1h cache."""
    shape = exchange.shape
    if shape is None:
        return
    usage.writes_default_1h = shape.cache_1h
    usage.speed = usage.speed or shape.speed
    if usage.inference_geo is None and shape.inference_geo is not None:
        usage.inference_geo = shape.inference_geo


def _row(exchange: Exchange, duration: float, usage: Usage, cost: Cost | None, interrupted: bool = False) -> LedgerRow:
    """The exchange's ledger row; `interrupted`: the row it gets if meter dies before it ends."""
    return LedgerRow(
        request_id=exchange.request_id,
        tenant_id=exchange.caller.tenant_id,
        key_id=exchange.caller.key_id,
        model=exchange.model,
        endpoint=exchange.endpoint,
        stream=exchange.stream,
        status=exchange.status,
        error_type="interrupted" if interrupted else stored_text(exchange.error_type),
        **billed_columns(usage, cost),
        response_model=stored_text(exchange.response_model),
        partial=interrupted or exchange.partial,
        stop_reason=stored_text(exchange.stop_reason),
        upstream_request_id=stored_text(exchange.upstream_request_id),
        started_at=exchange.started_at,
        finished_at=exchange.started_at + timedelta(seconds=duration),
        duration_ms=round(duration * 1000),
        ttfb_ms=None if exchange.ttfb_s is None else round(exchange.ttfb_s * 1000),
    )
