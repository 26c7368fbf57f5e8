"""The price table and the exact cost of a usage record.

Prices are USD per million tokens, as Decimals, each with the time it takes effect. A request is
priced at the price in effect when it started. Costs are exact Decimals: never floats. Every
process holds the whole table and re-reads it every second (`follow`), so a price change reaches
all of them at once.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.models import prices
from meter.usage import Usage

log = logging.getLogger("meter.pricing")
# Price changes reach every process within this time (the table is small).
REFRESH_S = 1.0

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    model: str
    effective_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_write_5m_per_mtok: Decimal
    cache_write_1h_per_mtok: Decimal
    cache_read_per_mtok: Decimal

    def cost(self, usage: Usage) -> Decimal:
        five_minute, one_hour = usage.cache_write_split()
        micro = (
            usage.input_tokens * self.input_per_mtok
            + usage.output_tokens * self.output_per_mtok
            + five_minute * self.cache_write_5m_per_mtok
            + one_hour * self.cache_write_1h_per_mtok
            + usage.cache_read_input_tokens * self.cache_read_per_mtok
        )
        return micro / MILLION


class PriceTable:
    """All prices, by model, ordered by effective time; replaced whole when reloaded."""

    def __init__(self, prices: Iterable[Price] = ()) -> None:
        self.replace(prices)

    def replace(self, prices: Iterable[Price]) -> None:
        by_model: dict[str, list[Price]] = {}
        for price in sorted(prices, key=lambda p: p.effective_from):
            by_model.setdefault(price.model, []).append(price)
        self._starts = {model: [p.effective_from for p in rows] for model, rows in by_model.items()}
        self._by_model = by_model

    def knows(self, model: str | None) -> bool:
        return model in self._by_model

    def price_at(self, model: str | None, when: datetime) -> Price | None:
        """The price in effect for `model` at `when`, or None if the model has none yet."""
        if model is None or model not in self._by_model:
            return None
        index = bisect.bisect_right(self._starts[model], when) - 1
        return self._by_model[model][index] if index >= 0 else None

    def cost(self, model: str | None, when: datetime, usage: Usage) -> Decimal | None:
        price = self.price_at(model, when)
        return None if price is None else price.cost(usage)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._by_model.values())

    async def load(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            self.replace(Price(**row) for row in (await conn.execute(select(prices))).mappings())

    async def follow(self, engine: AsyncEngine) -> None:
        """Reload every REFRESH_S; runs until cancelled."""
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.load(engine)
            except Exception:  # keep the last good table; the next refresh retries
                log.warning("price table refresh failed", exc_info=True)
