"""Files (first a beta, `anthropic-beta: files-api-2025-04-14`) through meter: each file is owned by the
tenant that uploaded it. Another tenant's file id answers exactly like a missing one, lists show a
tenant only its own files, and a `file_id` anywhere in a request body (document, image, container
upload) must be the caller's own, or the request is refused before anything is forwarded."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.models import files
from meter.errors import NotFound
from meter.proxy.exchange import Exchange
from meter.proxy.handler import Answer, Anthropic, TenantRequest, UpstreamRequest
from meter.proxy.lists import tenant_page
from meter.proxy.request import stream_spool

# Anthropic's cap on an uploaded file.
MAX_UPLOAD_BYTES = 500 * 1024 * 1024


async def check_owned(engine: AsyncEngine | None, tenant_id: str, file_ids: Iterable[str]) -> None:
    """NotFound, before forwarding, unless every file id is one of the tenant's live files."""
    wanted = set(file_ids)
    if not wanted:
        return
    if engine is None:
        raise NotFound(f"File not found: {min(wanted)}")
    query = select(files.c.id).where(
        files.c.tenant_id == tenant_id, files.c.id.in_(wanted), files.c.deleted_at.is_(None)
    )
    async with engine.connect() as conn:
        found = set((await conn.execute(query)).scalars())
    missing = wanted - found
    if missing:
        raise NotFound(f"File not found: {min(missing)}")


class _Owned(Anthropic):
    """A request about one file: refused as missing unless it is the caller's."""

    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        await check_owned(self.services.engine, exchange.caller.tenant_id, [request.params["file_id"]])
        self.file_id = request.params["file_id"]
        body = request.body if request.method == "POST" else b""
        return UpstreamRequest(request.method, request.path, request.query, request.forward_headers, body)


class FileRetrieve(_Owned):
    pass


class FileContent(_Owned):
    passthrough = True


class FileDelete(_Owned):
    async def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status == 200 and self.services.engine is not None:
            async with self.services.engine.begin() as conn:
                await conn.execute(update(files).where(files.c.id == self.file_id).values(deleted_at=func.now()))
        return status, body


class FileUpload(Anthropic):
    """The multipart upload is streamed to the upstream as it was spooled; the file is recorded as
    the tenant's from the upstream's answer, before the tenant sees it."""

    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        assert request.spool is not None
        self.exchange = exchange
        stream = stream_spool(request.spool)
        return UpstreamRequest("POST", request.path, request.query, request.forward_headers, b"", stream=stream)

    async def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status != 200 or self.services.engine is None:
            return status, body
        meta = msgspec.json.decode(body)
        caller = self.exchange.caller
        async with self.services.engine.begin() as conn:
            await conn.execute(
                insert(files)
                .values(
                    id=meta["id"],
                    tenant_id=caller.tenant_id,
                    key_id=caller.key_id,
                    filename=meta.get("filename"),
                    mime_type=meta.get("mime_type"),
                    size_bytes=meta.get("size_bytes"),
                    object=meta,
                )
                .on_conflict_do_nothing(index_elements=[files.c.id])
            )
        return status, body


class FileList(Anthropic):
    """Answered from meter's record of the tenant's files: never the operator's whole list."""

    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest | Answer:
        assert self.services.engine is not None
        async with self.services.engine.connect() as conn:
            return await tenant_page(conn, files, exchange.caller.tenant_id, request.query)
