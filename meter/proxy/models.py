"""`GET /v1/models` and `/v1/models/{id}`: a key limited to some models sees only those, and an
OpenAI client (one that sends no `anthropic-version` header) gets OpenAI's list shape."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import msgspec

from meter.errors import NotFound
from meter.openai_compat.errors import anthropic_error_to_openai


def models_answer(
    allowed: frozenset[str] | None, path: str, openai_client: bool
) -> Callable[[int, bytes], bytes] | None:
    """The rewrite of the upstream's answer this caller needs, if any. A model the key may not
    use is refused as if it did not exist. The list is filtered page by page."""
    model_id = unquote(path.split("/v1/models", 1)[1].strip("/"))
    if model_id and allowed is not None and model_id not in allowed:
        raise NotFound(f"model: {model_id}")
    if allowed is None and not openai_client:
        return None

    def rewrite(status: int, body: bytes) -> bytes:
        if status != 200:
            return anthropic_error_to_openai(status, body) if openai_client else body
        try:
            answer = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return body
        if not isinstance(answer, dict):
            return body
        if isinstance(answer.get("data"), list):
            models = [m for m in answer["data"] if isinstance(m, dict) and (allowed is None or m.get("id") in allowed)]
            if openai_client:
                return msgspec.json.encode({"object": "list", "data": [_openai_model(m) for m in models]})
            answer.update(data=models, first_id=models[0]["id"] if models else None)
            answer["last_id"] = models[-1]["id"] if models else None
            return msgspec.json.encode(answer)
        return msgspec.json.encode(_openai_model(answer)) if openai_client else body

    return rewrite


def _openai_model(model: dict[str, Any]) -> dict[str, Any]:
    try:
        created = int(datetime.fromisoformat(str(model.get("created_at"))).timestamp())
    except ValueError:
        created = 0
    return {"id": model.get("id"), "object": "model", "created": created, "owned_by": "anthropic"}
