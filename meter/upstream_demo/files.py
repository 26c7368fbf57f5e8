"""Files in the demo upstream: upload (multipart, field `file`), list (newest first, paged),
metadata, download and delete, in Anthropic's shapes (the API began as a beta, `anthropic-beta:
files-api-2025-04-14`; current SDKs send the header only when asked to, so it is not required). Unlike Anthropic,
which lets only files made by tools be downloaded, the demo serves every file's content back, so
that a download through a proxy can be tested end to end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meter.upstream_demo import wire
from meter.upstream_demo.batches import _iso
from meter.upstream_demo.errors import DemoError, invalid_request
from meter.upstream_demo.replies import random_base62

MAX_FILE_BYTES = 500 * 1024 * 1024


@dataclass
class StoredFile:
    meta: dict[str, Any]
    content: bytes
    created_at: float


class DemoFiles:
    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}

    async def upload(self, request: web.Request) -> bytes:
        if not request.content_type.startswith("multipart/"):
            raise invalid_request("The upload must be multipart/form-data, with the file in a part named file.")
        try:
            return await self._upload(request)
        except ValueError as exc:  # a malformed multipart body
            raise invalid_request(f"The multipart body cannot be read: {exc}") from None

    async def _upload(self, request: web.Request) -> bytes:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if getattr(part, "name", None) != "file":
                continue
            content = await part.read()  # type: ignore[union-attr]
            if len(content) > MAX_FILE_BYTES:
                raise DemoError(413, "File exceeds the maximum size of 500 MB.")
            now = time.time()
            meta = {
                "id": "file_011" + random_base62(21),
                "type": "file",
                "filename": getattr(part, "filename", None) or "upload",
                "mime_type": part.headers.get("Content-Type", "application/octet-stream"),
                "size_bytes": len(content),
                "created_at": _iso(now),
                "downloadable": True,
            }
            self._files[str(meta["id"])] = StoredFile(meta, bytes(content), now)
            return wire.dumps(meta)
        raise invalid_request("file: Field required (a multipart part named file)")

    def find(self, file_id: str) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None:
            raise DemoError(404, f"File not found: {file_id}")
        return stored

    def page(self, query: Any) -> bytes:
        live = sorted(self._files.values(), key=lambda f: f.created_at, reverse=True)
        ids = [f.meta["id"] for f in live]
        limit = int(query.get("limit", "20")) if str(query.get("limit", "20")).isdigit() else 0
        if not 1 <= limit <= 1000:
            raise invalid_request("limit: Input should be between 1 and 1000")
        start = ids.index(query["after_id"]) + 1 if query.get("after_id") in ids else 0
        window = live[start : start + limit]
        data = [f.meta for f in window]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        more = len(live) > start + limit
        return wire.dumps({"data": data, "has_more": more, "first_id": first, "last_id": last})

    def delete(self, file_id: str) -> bytes:
        self.find(file_id)
        del self._files[file_id]
        return wire.dumps({"id": file_id, "type": "file_deleted"})
