"""The price model and the exact cost of a call.

A price is per model and effective time: five token prices (USD per million tokens: input, output,
5m and 1h cache write, cache read), per-unit fees of server tools (web search), multipliers of the
token prices by how the call ran (inference geo, service tier, speed), token prices that replace
them above an input threshold (long context), and the model's context window and maximum output.
A call is priced at the price in effect when it started, by the model the tenant asked for (its
alias), or else the model the upstream answered with, if only that one has a price; the reservation
uses the same request model. Costs are exact Decimals: never floats.

Every process holds the whole table and re-reads it every second (`follow`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.models import prices
from meter.money import decimal_text
from meter.usage import Usage

log = logging.getLogger("meter.pricing")
MILLION = Decimal(1_000_000)
# Price changes reach every process within this time (the table is small).
REFRESH_S = 1.0
TOKEN_PRICES = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_write_5m_per_mtok",
    "cache_write_1h_per_mtok",
    "cache_read_per_mtok",
)
# The usage fields a multiplier may depend on.
MULTIPLIED_BY = ("inference_geo", "service_tier", "speed")


@dataclass(frozen=True)
class TokenPrices:
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_write_5m_per_mtok: Decimal
    cache_write_1h_per_mtok: Decimal
    cache_read_per_mtok: Decimal

    def of(self, step: Usage) -> Decimal:
        """The cost of one sampling step's tokens at these prices, USD."""
        five_minute, one_hour = step.cache_write_split()
        micro = (
            step.input_tokens * self.input_per_mtok
            + step.output_tokens * self.output_per_mtok
            + five_minute * self.cache_write_5m_per_mtok
            + one_hour * self.cache_write_1h_per_mtok
            + step.cache_read_input_tokens * self.cache_read_per_mtok
        )
        return micro / MILLION

    @property
    def dearest_input(self) -> Decimal:
        return max(self.input_per_mtok, self.cache_write_5m_per_mtok, self.cache_write_1h_per_mtok)


@dataclass(frozen=True)
class LongContext:
    above_input_tokens: int
    prices: TokenPrices


@dataclass(frozen=True)
class Cost:
    """What a call costs: `total` = tokens x multiplier + fees; `fees` itemised by counter."""

    total: Decimal
    fees: dict[str, tuple[int, Decimal]]
    long_context: bool


# What a free call costs: exactly nothing.
FREE = Cost(Decimal(0), {}, False)


@dataclass(frozen=True)
class Price:
    model: str
    effective_from: datetime
    tokens: TokenPrices
    server_tool_fees: Mapping[str, Decimal] = field(default_factory=dict)
    multipliers: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)
    long_context: LongContext | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    verified: bool = False
    source: str | None = None

    def prices_for(self, prompt_tokens: int) -> tuple[TokenPrices, bool]:
        """The token prices of a sampling step with this many prompt tokens, and whether they are
        the long-context ones (which then apply to all of the step's tokens)."""
        tier = self.long_context
        if tier is not None and prompt_tokens > tier.above_input_tokens:
            return tier.prices, True
        return self.tokens, False

    @cached_property
    def dearest_factors(self) -> dict[str, Decimal]:
        """For each multiplier family, the largest factor a call that names no value may be billed
        with, worked out once per price: never below 1, batch pricing applies to batches only, and a
        call runs fast only if it asks to (speed 1)."""
        return {
            name: Decimal(1)
            if name == "speed"
            else max([Decimal(1), *(f for value, f in self.multipliers.get(name, {}).items() if value != "batch")])
            for name in MULTIPLIED_BY
        }

    @cached_property
    def reserve_rates(self) -> dict[tuple[Any, ...], tuple[Decimal, Decimal]]:
        """The per-token rates worst cases of this price were reserved at, by kind of call
        (proxy/estimate.py fills it)."""
        return {}

    def multiplier(self, how: Mapping[str, str | None]) -> Decimal:
        """The product of the multipliers that apply to a call that ran `how` (geo, tier, speed)."""
        product = Decimal(1)
        for name in MULTIPLIED_BY:
            value = how.get(name)
            if value is not None:
                product *= self.multipliers.get(name, {}).get(value, Decimal(1))
        return product

    def cost(self, usage: Usage) -> Cost:
        tokens, long_context = Decimal(0), False
        for step in usage.billed_steps():
            step_prices, is_long = self.prices_for(step.prompt_tokens)
            tokens += step_prices.of(step)
            long_context = long_context or is_long
        how = {"inference_geo": usage.inference_geo, "service_tier": usage.service_tier, "speed": usage.speed}
        fees = {
            name: (units, units * self.server_tool_fees[name])
            for name, units in usage.server_tool_use.items()
            if units and name in self.server_tool_fees
        }
        total = tokens * self.multiplier(how) + sum((usd for _, usd in fees.values()), Decimal(0))
        return Cost(total, fees, long_context)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Price:
        tier = row.get("long_context")
        return cls(
            model=row["model"],
            effective_from=row["effective_from"],
            tokens=TokenPrices(*(Decimal(str(row[name])) for name in TOKEN_PRICES)),
            server_tool_fees={name: Decimal(str(fee)) for name, fee in (row.get("server_tool_fees") or {}).items()},
            multipliers={
                name: {value: Decimal(str(factor)) for value, factor in by_value.items()}
                for name, by_value in (row.get("multipliers") or {}).items()
            },
            long_context=LongContext(
                int(tier["above_input_tokens"]), TokenPrices(*(Decimal(str(tier[name])) for name in TOKEN_PRICES))
            )
            if tier
            else None,
            context_window=row.get("context_window"),
            max_output_tokens=row.get("max_output_tokens"),
            verified=bool(row.get("verified")),
            source=row.get("source"),
        )

    def as_row(self) -> dict[str, Any]:
        """The columns of `prices` for this price (JSON fields with decimal text)."""
        tier = self.long_context
        return {
            "model": self.model,
            "effective_from": self.effective_from,
            **{name: getattr(self.tokens, name) for name in TOKEN_PRICES},
            "server_tool_fees": {name: decimal_text(fee) for name, fee in self.server_tool_fees.items()},
            "multipliers": {
                name: {value: decimal_text(factor) for value, factor in by_value.items()}
                for name, by_value in self.multipliers.items()
            },
            "long_context": {
                "above_input_tokens": tier.above_input_tokens,
                **{name: decimal_text(getattr(tier.prices, name)) for name in TOKEN_PRICES},
            }
            if tier
            else None,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "verified": self.verified,
            "source": self.source,
        }


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

    def price_of_call(self, requested: str | None, answered: str | None, when: datetime) -> Price | None:
        """The price a call is billed at: its requested model's, else its answered model's."""
        return self.price_at(requested, when) or self.price_at(answered, when)

    def cost(self, model: str | None, when: datetime, usage: Usage) -> Decimal | None:
        price = self.price_at(model, when)
        return None if price is None else price.cost(usage).total

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._by_model.values())

    async def load(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            self.replace(Price.from_row(dict(row)) for row in (await conn.execute(select(prices))).mappings())

    async def follow(self, engine: AsyncEngine) -> None:
        """Reload every REFRESH_S; runs until cancelled."""
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.load(engine)
            except Exception:  # keep the last good table; the next refresh retries
                log.warning("price table refresh failed", exc_info=True)
