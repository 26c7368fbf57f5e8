"""Emission on its own database, with no meter process: two checkers (two engines, as two
processes have) looking at the same facts at the same moment create each event once, for tenant
and key limits alike, and counters of an earlier period announce nothing."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, insert, select, update

from meter import periods
from meter.db import migrate
from meter.db.engine import create_engine
from meter.db.models import api_keys, limits, tenants, webhook_deliveries, webhooks
from meter.metrics import Metrics
from meter.webhooks.checker import Checker
from tests.support import create_database


@pytest.fixture(scope="module")
def emission_db(postgres_server: str) -> str:
    url = create_database(postgres_server, f"meter_emission_{secrets.token_hex(3)}")
    migrate.upgrade(url)
    return url


async def scenario(url: str) -> None:
    engines = [create_engine(url) for _ in range(2)]
    checkers = [Checker(engine, Metrics(CollectorRegistry())) for engine in engines]
    today = periods.today()
    try:
        async with engines[0].begin() as conn:
            await conn.execute(insert(tenants).values(id="ten_a", name="a"))
            await conn.execute(
                insert(api_keys).values(id="key_a", tenant_id="ten_a", prefix="sk-meter-x", key_hash="h")
            )
            # The key's daily quota is used to 85 % (settled), its tenant's monthly budget to 40 %.
            await conn.execute(
                insert(limits).values(
                    subject_id="key_a", tenant_id="ten_a", tokens_per_day=1000, day=today, day_tokens=850
                )
            )
            await conn.execute(
                insert(limits).values(
                    subject_id="ten_a",
                    tenant_id="ten_a",
                    budget_usd_per_month=10,
                    month=periods.month_start(today),
                    month_usd=4,
                )
            )
            for webhook_id in ("wh_1", "wh_2"):
                await conn.execute(
                    insert(webhooks).values(
                        id=webhook_id,
                        url="http://127.0.0.1:9/",
                        event_types=["budget.threshold"],
                        credit_low_usd=10,
                        secret="whsec_AAAA",
                    )
                )
        created = await asyncio.gather(*(checker.check_once() for checker in checkers))
        # 50 and 80 % of the key's daily quota, for each of two webhooks: once, between both checkers.
        assert sum(created) == 4
        async with engines[0].connect() as conn:
            keys = sorted((await conn.execute(select(webhook_deliveries.c.dedup_key))).scalars())
        assert keys == sorted(
            f"budget.threshold:key_a:tokens_per_day:{today.isoformat()}:1000:{t}" for t in (50, 80) for _ in range(2)
        )
        assert sum(await asyncio.gather(*(checker.check_once() for checker in checkers))) == 0
        # The tenant's budget reaches 100 %: its three thresholds at once. Then counters of an
        # earlier day (a key not used today) announce nothing.
        yesterday = today - timedelta(days=1)
        async with engines[0].begin() as conn:
            await conn.execute(update(limits).where(limits.c.subject_id == "ten_a").values(month_usd=10))
        assert sum(await asyncio.gather(*(checker.check_once() for checker in checkers))) == 6  # 50, 80, 100 x 2
        async with engines[0].begin() as conn:
            await conn.execute(update(limits).where(limits.c.subject_id == "key_a").values(day=yesterday))
        assert sum(await asyncio.gather(*(checker.check_once() for checker in checkers))) == 0
        async with engines[0].connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(webhook_deliveries))).scalar_one()
        assert total == 10
        # The operator raises the tenant's budget to 16: 50 % of the new budget is a new fact.
        async with engines[0].begin() as conn:
            await conn.execute(update(limits).where(limits.c.subject_id == "ten_a").values(budget_usd_per_month=16))
        assert sum(await asyncio.gather(*(checker.check_once() for checker in checkers))) == 2
    finally:
        for engine in engines:
            await engine.dispose()


def test_two_checkers_emit_each_event_once(emission_db: str) -> None:
    asyncio.run(scenario(emission_db))
