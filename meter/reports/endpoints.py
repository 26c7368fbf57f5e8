"""The handlers of the tenant's own reports: answered by meter (never forwarded), for the caller's
tenant only. Like every authenticated request they count against `requests_per_minute` (and are
read only once admitted) and are in the ledger, at no cost."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from meter.proxy.auth import Caller
from meter.proxy.exchange import Exchange
from meter.proxy.handler import Answer, Anthropic, TenantRequest, UpstreamRequest
from meter.reports.cost import cost_report
from meter.reports.headroom import headroom
from meter.reports.page import read_query
from meter.reports.usage import usage_report


class _Local(Anthropic):
    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        engine = self.services.engine
        assert engine is not None

        async def read() -> bytes:
            async with engine.connect() as conn:
                return msgspec.json.encode(await self.read(conn, exchange.caller, request))

        # Read once admitted: a request refused for its rate runs no query.
        return Answer(200, b"", deferred=read)

    async def read(self, conn: AsyncConnection, caller: Caller, request: TenantRequest) -> dict[str, Any]:
        raise NotImplementedError


class UsageReport(_Local):
    async def read(self, conn: AsyncConnection, caller: Caller, request: TenantRequest) -> dict[str, Any]:
        return await usage_report(conn, caller.tenant_id, read_query(request.query))


class CostReport(_Local):
    async def read(self, conn: AsyncConnection, caller: Caller, request: TenantRequest) -> dict[str, Any]:
        return await cost_report(conn, caller.tenant_id, read_query(request.query))


class Limits(_Local):
    async def read(self, conn: AsyncConnection, caller: Caller, request: TenantRequest) -> dict[str, Any]:
        return await headroom(conn, caller)
