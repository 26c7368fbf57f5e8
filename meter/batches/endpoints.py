"""The handlers of the batch entries of the endpoint table.

- create: every request inside is checked like a Messages call (fields, allowed models, the
  caller's own files), and the worst case of all of them at batch prices is reserved against the
  tenant's limits (a hold of no concurrency slot, lasting the batch's lifetime, settled when its
  results are billed); the body is streamed to the upstream from its spool file. The batch is
  recorded as the tenant's before the tenant sees its id.
- retrieve, cancel, delete, results: the tenant's own batches only; another tenant's id answers
  exactly like a missing one and is never forwarded. `results_url` always points at meter.
- list: answered from meter's record of the tenant's batches (proxy/lists.py).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import msgspec

from meter.batches import store
from meter.batches.scan import requests_of
from meter.db.models import batches
from meter.errors import InvalidRequest, NotFound
from meter.files import check_owned
from meter.proxy.exchange import Exchange, Reservation
from meter.proxy.handler import Answer, Anthropic, TenantRequest, UpstreamRequest
from meter.proxy.lists import tenant_page
from meter.proxy.request import check_fields, stream_spool

# Anthropic's cap on a batch creation body, and on the requests in one batch.
MAX_BATCH_BYTES = 256 * 1024 * 1024
MAX_REQUESTS = 100_000
# A batch ends within 24 hours (then its unprocessed requests expire); its hold outlives that, so
# that the billing of its results always finds it.
HOLD_TTL_S = 30 * 3600.0
HOLD_OWNER = "batches"


def results_url(base: str, batch_id: str) -> str:
    return f"{base.rstrip('/')}/v1/messages/batches/{batch_id}/results"


class _Batches(Anthropic):
    """What every batch handler shares: the URL meter hands out, and the tenant's view of an object."""

    def base(self, request: TenantRequest) -> str:
        return self.services.public_url or request.base_url

    def view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The batch object as the tenant sees it: its results at meter, never at the upstream."""
        if obj.get("results_url"):
            return {**obj, "results_url": results_url(self._base, str(obj["id"]))}
        return obj

    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        self._base = self.base(request)
        self.exchange = exchange
        return await self.forward(exchange, request)

    async def forward(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        raise NotImplementedError

    async def owned(self, exchange: Exchange, batch_id: str) -> dict[str, Any]:
        assert self.services.engine is not None
        async with self.services.engine.connect() as conn:
            row = await store.owned(conn, exchange.caller.tenant_id, batch_id)
        if row is None:
            raise NotFound(f"Batch not found: {batch_id}")
        return row

    async def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status != 200:
            return status, body
        obj = msgspec.json.decode(body)
        await self.keep(obj)
        return status, msgspec.json.encode(self.view(obj))

    async def keep(self, obj: dict[str, Any]) -> None:
        assert self.services.engine is not None
        async with self.services.engine.begin() as conn:
            await store.seen(conn, obj)


class BatchCreate(_Batches):
    async def forward(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        assert request.spool is not None and self.services.worst_cases is not None
        caller = exchange.caller
        self.request_models: dict[str, str] = {}
        tokens, usd, file_ids = 0, Decimal(0), set()
        for entry, size in requests_of(request.spool):
            custom_id, params = entry.get("custom_id"), entry.get("params")
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= 64 or custom_id in self.request_models:
                raise InvalidRequest("requests: every custom_id must be a unique string of 1 to 64 characters")
            if not isinstance(params, dict):
                raise InvalidRequest(f"requests.{custom_id}.params: must be a Messages request object")
            try:
                fields = check_fields(params, size, caller.allowed_models)
            except InvalidRequest as error:
                raise InvalidRequest(f"requests.{custom_id}.params: {error.message}") from None
            if fields.stream:
                raise InvalidRequest(f"requests.{custom_id}.params.stream: batch requests cannot stream")
            fields.shape.service_tier = "batch"
            bound = self.services.worst_cases.worst_case(caller, fields.model, fields.shape, fields.max_tokens)
            tokens, usd = tokens + bound.tokens, usd + bound.usd
            file_ids |= fields.shape.file_ids
            self.request_models[custom_id] = fields.model
            if len(self.request_models) > MAX_REQUESTS:
                raise InvalidRequest(f"requests: at most {MAX_REQUESTS} requests in one batch")
        if not self.request_models:
            raise InvalidRequest("requests: give at least one request")
        await check_owned(self.services.engine, caller.tenant_id, file_ids)
        exchange.reservation = Reservation(tokens, usd, HOLD_TTL_S, HOLD_OWNER)
        stream = stream_spool(request.spool)
        return UpstreamRequest("POST", request.path, request.query, request.forward_headers, b"", stream=stream)

    async def keep(self, obj: dict[str, Any]) -> None:
        """The batch becomes the tenant's, with its hold (no longer the request's to settle)."""
        assert self.services.engine is not None
        exchange, hold = self.exchange, self.exchange.hold
        held = (
            (hold.id, list(hold.subjects), date.fromisoformat(hold.day), date.fromisoformat(hold.month))
            if hold
            else None
        )
        async with self.services.engine.begin() as conn:
            await store.record(conn, obj, exchange.caller.tenant_id, exchange.caller.key_id, self.request_models, held)
        exchange.hold = None


class BatchList(_Batches):
    async def forward(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        assert self.services.engine is not None
        async with self.services.engine.connect() as conn:
            page = await tenant_page(conn, batches, exchange.caller.tenant_id, request.query)
        listed = msgspec.json.decode(page.body)
        listed["data"] = [self.view(obj) for obj in listed["data"]]
        return Answer(200, msgspec.json.encode(listed))


class BatchRetrieve(_Batches):
    async def forward(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        await self.owned(exchange, request.params["batch_id"])
        return UpstreamRequest(request.method, request.path, b"", request.forward_headers, b"")


class BatchCancel(BatchRetrieve):
    pass


class BatchDelete(_Batches):
    async def forward(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        row = await self.owned(exchange, request.params["batch_id"])
        if row["billed_at"] is None and self.services.billing is not None:
            # Its results go with it: bill them first (a batch that has not ended yet cannot be deleted).
            await self.services.billing.bill_now(row["id"])
        self.batch_id = row["id"]
        return UpstreamRequest(request.method, request.path, b"", request.forward_headers, b"")

    async def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status == 200:
            assert self.services.engine is not None
            async with self.services.engine.begin() as conn:
                await store.deleted(conn, self.batch_id)
        return status, body


class BatchResults(_Batches):
    """The results file, streamed through untouched; billing reads it on its own (billing.py)."""

    passthrough = True

    async def forward(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        await self.owned(exchange, request.params["batch_id"])
        return UpstreamRequest("GET", request.path, b"", request.forward_headers, b"")
