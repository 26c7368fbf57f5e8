"""`GET /v1/models` and `/v1/models/{model_id}`: a key limited to some models sees only those, and an
OpenAI client (one that sends no `anthropic-version` header) gets OpenAI's list shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from meter.errors import MeterError, NotFound
from meter.openai_compat.errors import anthropic_error_to_openai
from meter.proxy.exchange import Exchange
from meter.proxy.handler import ANTHROPIC_VERSION, Services, StreamTranslator, TenantRequest, UpstreamRequest


class Models:
    passthrough = False

    def __init__(self, services: Services | None = None) -> None:
        self._allowed: frozenset[str] | None = None
        self._openai_client = False

    async def prepare(self, exchange: Exchange, request: TenantRequest) -> UpstreamRequest:
        """A model the key may not use is refused as if it did not exist."""
        self._allowed = allowed = exchange.caller.allowed_models
        model_id = request.params.get("model_id")
        if model_id is not None and allowed is not None and model_id not in allowed:
            raise NotFound(f"model: {model_id}")
        headers = request.forward_headers
        # The documented rule: a models request without Anthropic's version header is an OpenAI client's.
        self._openai_client = b"anthropic-version" not in request.headers
        if self._openai_client:
            headers = [*headers, (b"anthropic-version", ANTHROPIC_VERSION)]
        return UpstreamRequest(request.method, request.path, request.query, headers, b"")

    async def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        """The list is filtered page by page."""
        return status, self._rewrite(status, body)

    def _rewrite(self, status: int, body: bytes) -> bytes:
        allowed, openai_client = self._allowed, self._openai_client
        if allowed is None and not openai_client:
            return body
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

    def stream(self) -> StreamTranslator | None:
        return None

    def error(self, error: MeterError, request_id: str) -> bytes | None:
        return None


def _openai_model(model: dict[str, Any]) -> dict[str, Any]:
    try:
        created = int(datetime.fromisoformat(str(model.get("created_at"))).timestamp())
    except ValueError:
        created = 0
    return {"id": model.get("id"), "object": "model", "created": created, "owned_by": "anthropic"}
