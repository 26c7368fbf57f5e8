"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's own API, forwarded byte for
byte once the fields meter relies on are checked."""

from __future__ import annotations

from meter.files import check_owned
from meter.proxy.exchange import Exchange
from meter.proxy.handler import Anthropic, TenantRequest, UpstreamRequest
from meter.proxy.request import read_document, read_fields


class Messages(Anthropic):
    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest:
        document = await read_document(request.body)
        read_fields(exchange, document, len(request.body))
        if exchange.shape is not None and exchange.shape.file_ids:
            await check_owned(self.services.engine, exchange.caller.tenant_id, exchange.shape.file_ids)
        return UpstreamRequest(
            request.method, request.path, request.query, request.forward_headers, request.body, document
        )
