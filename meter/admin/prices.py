"""The price table: USD per million tokens per model, each price with the time it takes effect.
A change applies to requests that start after its effective time, never to recorded ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
from litestar import Controller, get, put
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meter import money
from meter.admin import audit
from meter.admin.schema import ERRORS, MAX_PRICE, ModelId, PerMillionTokens, check_usd
from meter.db.models import prices
from meter.errors import InvalidRequest
from meter.pricing import Price, PriceTable

# A little slack for clocks: "now" from a client is a moment ago when it arrives.
PAST_TOLERANCE = timedelta(minutes=1)
# Anthropic's fixed multipliers of the input price, used when a cache price is not given.
PRICE_FIELDS = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_write_5m_per_mtok",
    "cache_write_1h_per_mtok",
    "cache_read_per_mtok",
)
CACHE_MULTIPLIERS = {"cache_write_5m": Decimal("1.25"), "cache_write_1h": Decimal(2), "cache_read": Decimal("0.1")}


class PriceSpec(msgspec.Struct, forbid_unknown_fields=True):
    model: ModelId
    input_per_mtok: PerMillionTokens
    output_per_mtok: PerMillionTokens
    cache_write_5m_per_mtok: PerMillionTokens | None = None
    cache_write_1h_per_mtok: PerMillionTokens | None = None
    cache_read_per_mtok: PerMillionTokens | None = None
    effective_from: datetime | None = None  # default: now

    def __post_init__(self) -> None:
        for name in PRICE_FIELDS:
            value = getattr(self, name)
            check_usd(name, value, MAX_PRICE)
            if value is not None and int(value.as_tuple().exponent) < -6:
                raise ValueError(f"{name}: at most 6 decimal places")


class PriceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    prices: list[PriceSpec]


class PriceView(msgspec.Struct):
    model: str
    effective_from: datetime
    input_per_mtok: str
    output_per_mtok: str
    cache_write_5m_per_mtok: str
    cache_write_1h_per_mtok: str
    cache_read_per_mtok: str


class PriceList(msgspec.Struct):
    data: list[PriceView]
    next_cursor: str | None = None


def _view(price: Price) -> PriceView:
    return PriceView(
        model=price.model,
        effective_from=price.effective_from,
        input_per_mtok=money.decimal_text(price.input_per_mtok),
        output_per_mtok=money.decimal_text(price.output_per_mtok),
        cache_write_5m_per_mtok=money.decimal_text(price.cache_write_5m_per_mtok),
        cache_write_1h_per_mtok=money.decimal_text(price.cache_write_1h_per_mtok),
        cache_read_per_mtok=money.decimal_text(price.cache_read_per_mtok),
    )


async def list_prices(conn: AsyncConnection) -> PriceList:
    rows = (await conn.execute(select(prices).order_by(prices.c.model, prices.c.effective_from))).mappings()
    return PriceList(data=[_view(Price(**row)) for row in rows])


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
        rows.append(
            {
                "model": spec.model.strip(),
                "effective_from": start,
                "input_per_mtok": spec.input_per_mtok,
                "output_per_mtok": spec.output_per_mtok,
                **{
                    f"{kind}_per_mtok": getattr(spec, f"{kind}_per_mtok")
                    if getattr(spec, f"{kind}_per_mtok") is not None
                    else spec.input_per_mtok * multiplier
                    for kind, multiplier in CACHE_MULTIPLIERS.items()
                },
            }
        )
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
