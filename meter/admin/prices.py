"""The price table: USD per million tokens per model, each price with the time it takes effect.
A change applies to requests that start after its effective time, never to recorded ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, put
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money
from meter.admin import audit
from meter.admin.schema import ERRORS, MAX_PRICE, ModelId, PerMillionTokens, Text, Usd, check_usd
from meter.db.models import prices
from meter.errors import InvalidRequest
from meter.pricing import TOKEN_PRICES, LongContext, Price, PriceTable, TokenPrices

# A little slack for clocks: "now" from a client is a moment ago when it arrives.
PAST_TOLERANCE = timedelta(minutes=1)
# Anthropic's fixed multipliers of the input price, used when a cache price is not given.
CACHE_MULTIPLIERS = {"cache_write_5m": Decimal("1.25"), "cache_write_1h": Decimal(2), "cache_read": Decimal("0.1")}
MAX_FEE = Decimal(1000)  # USD per unit of a server tool
MAX_MULTIPLIER = Decimal(100)
Count = Annotated[int, msgspec.Meta(ge=1, le=100_000_000)]
Name = Annotated[str, msgspec.Meta(pattern="^[a-z0-9_]{1,64}$")]


class TokenPriceSpec(msgspec.Struct, forbid_unknown_fields=True):
    """USD per million tokens; cache prices default to Anthropic's multiples of the input price."""

    input_per_mtok: PerMillionTokens
    output_per_mtok: PerMillionTokens
    cache_write_5m_per_mtok: PerMillionTokens | None = None
    cache_write_1h_per_mtok: PerMillionTokens | None = None
    cache_read_per_mtok: PerMillionTokens | None = None

    def __post_init__(self) -> None:
        for name in TOKEN_PRICES:
            value = getattr(self, name)
            check_usd(name, value, MAX_PRICE)
            if value is not None and int(value.as_tuple().exponent) < -6:
                raise ValueError(f"{name}: at most 6 decimal places")

    def prices(self) -> TokenPrices:
        cache = {
            f"{kind}_per_mtok": getattr(self, f"{kind}_per_mtok") or self.input_per_mtok * multiplier
            for kind, multiplier in CACHE_MULTIPLIERS.items()
        }
        return TokenPrices(input_per_mtok=self.input_per_mtok, output_per_mtok=self.output_per_mtok, **cache)


class LongContextSpec(TokenPriceSpec, forbid_unknown_fields=True, kw_only=True):
    """Token prices for a sampling step whose prompt (uncached + cache tokens) exceeds the threshold."""

    above_input_tokens: Count


class PriceSpec(TokenPriceSpec, forbid_unknown_fields=True, kw_only=True):
    model: ModelId
    effective_from: datetime | None = None  # default: now
    # USD per unit of a server tool, by its usage counter: {"web_search_requests": "0.01"}.
    server_tool_fees: dict[Name, Usd] = {}
    # By usage field (inference_geo, service_tier, speed) and value: {"service_tier": {"batch": "0.5"}}.
    multipliers: dict[Literal["inference_geo", "service_tier", "speed"], dict[Name, Usd]] = {}
    long_context: LongContextSpec | None = None
    context_window: Count | None = None
    max_output_tokens: Count | None = None
    verified: bool = False
    source: Text | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, fee in self.server_tool_fees.items():
            check_usd(f"server_tool_fees.{name}", fee, MAX_FEE)
        for field, factors in self.multipliers.items():
            for value, factor in factors.items():
                check_usd(f"multipliers.{field}.{value}", factor, MAX_MULTIPLIER)
                if not factor or int(factor.as_tuple().exponent) < -4:
                    raise ValueError(f"multipliers.{field}.{value}: a positive number with at most 4 decimal places")

    def price(self, start: datetime) -> Price:
        tier = self.long_context
        return Price(
            model=self.model.strip(),
            effective_from=start,
            tokens=self.prices(),
            server_tool_fees=dict(self.server_tool_fees),
            multipliers={field: dict(factors) for field, factors in self.multipliers.items()},
            long_context=LongContext(tier.above_input_tokens, tier.prices()) if tier else None,
            context_window=self.context_window,
            max_output_tokens=self.max_output_tokens,
            verified=self.verified,
            source=self.source,
        )


class PriceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    prices: list[PriceSpec]


class LongContextView(msgspec.Struct):
    above_input_tokens: int
    input_per_mtok: str
    output_per_mtok: str
    cache_write_5m_per_mtok: str
    cache_write_1h_per_mtok: str
    cache_read_per_mtok: str


class PriceView(msgspec.Struct):
    """A price as the API and `meter prices export` write it: the same fields `PriceSpec` reads."""

    model: str
    effective_from: datetime
    input_per_mtok: str
    output_per_mtok: str
    cache_write_5m_per_mtok: str
    cache_write_1h_per_mtok: str
    cache_read_per_mtok: str
    server_tool_fees: dict[str, str]
    multipliers: dict[str, dict[str, str]]
    long_context: LongContextView | None
    context_window: int | None
    max_output_tokens: int | None
    verified: bool
    source: str | None


class PriceList(msgspec.Struct):
    data: list[PriceView]
    next_cursor: str | None = None


def _view(price: Price) -> PriceView:
    row = price.as_row()
    row.update({name: money.decimal_text(row[name]) for name in TOKEN_PRICES})
    return msgspec.convert(row, PriceView)


async def list_prices(conn: AsyncConnection) -> PriceList:
    rows = (await conn.execute(select(prices).order_by(prices.c.model, prices.c.effective_from))).mappings()
    return PriceList(data=[_view(Price.from_row(dict(row))) for row in rows])


async def set_prices(conn: AsyncConnection, update: PriceUpdate, actor: str) -> PriceList:
    now = datetime.now(UTC)
    rows = []
    for spec in update.prices:
        start = spec.effective_from or now
        if start.tzinfo is None:
            raise InvalidRequest("effective_from: must carry a time zone, e.g. 2027-01-01T00:00:00Z")
        if start < now - PAST_TOLERANCE:
            raise InvalidRequest("effective_from: must not be in the past; recorded costs never change")
        if not spec.model.strip():
            raise InvalidRequest("model: must not be empty")
        rows.append(spec.price(start).as_row())
    if not rows:
        raise InvalidRequest("prices: give at least one price")
    moments = [(row["model"], row["effective_from"]) for row in rows]
    if len(set(moments)) < len(moments):
        raise InvalidRequest("prices: two prices for the same model take effect at the same time")
    await audit.record(conn, actor, "prices.set", None, {"prices": rows})
    statement = insert(prices).values(rows)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[prices.c.model, prices.c.effective_from],
            set_={name: statement.excluded[name] for name in rows[0] if name not in ("model", "effective_from")},
        )
    )
    return await list_prices(conn)


class PriceController(Controller):
    path = "/prices"

    @get("/", summary="Every price, by model and effective time", responses=ERRORS)
    async def list(self, db: AsyncEngine) -> PriceList:
        async with db.connect() as conn:
            return await list_prices(conn)

    @put(
        "/",
        summary="Add or replace prices; each applies to requests that start after its effective_from",
        responses=ERRORS,
    )
    async def put(self, data: PriceUpdate, db: AsyncEngine, price_table: PriceTable, actor: str) -> PriceList:
        async with db.begin() as conn:
            answer = await set_prices(conn, data, actor)
        await price_table.load(db)  # this process at once; the others within a second
        return answer
