"""`GET /v1/models` for a key limited to some models: it sees only those."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

import msgspec

from meter.errors import NotFound


def visible_models(allowed: frozenset[str], path: str) -> Callable[[bytes], bytes] | None:
    """For `/v1/models/{id}`: refuse a model the key may not use, as if it did not exist. For the
    list: a rewrite of the upstream's answer keeping only the allowed models (page by page)."""
    model_id = unquote(path.split("/v1/models", 1)[1].strip("/"))
    if model_id:
        if model_id not in allowed:
            raise NotFound(f"model: {model_id}")
        return None

    def keep_allowed(body: bytes) -> bytes:
        try:
            page = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return body
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            return body
        kept = [model for model in page["data"] if isinstance(model, dict) and model.get("id") in allowed]
        page["data"] = kept
        page["first_id"] = kept[0]["id"] if kept else None
        page["last_id"] = kept[-1]["id"] if kept else None
        return msgspec.json.encode(page)

    return keep_allowed
