"""The static model catalogue served at GET /v1/models, with Anthropic's cursor pagination."""

from __future__ import annotations

from typing import Any

from meter.upstream_demo.errors import DemoError, invalid_request

# Newest first, as Anthropic lists them. Dates are approximate release days (demo data).
MODELS: tuple[dict[str, str], ...] = tuple(
    {"type": "model", "id": model_id, "display_name": name, "created_at": created}
    for model_id, name, created in (
        ("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16T00:00:00Z"),
        ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
        ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z"),
        ("claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
        ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
        ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    )
)
_BY_ID = {model["id"]: model for model in MODELS}
# Retrieval accepts aliases, as Anthropic's does, and answers with the snapshot.
_ALIASES = {"claude-opus-4-5": "claude-opus-4-5-20251101", "claude-sonnet-4-5": "claude-sonnet-4-5-20250929"}

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def get_model(model_id: str) -> dict[str, str]:
    model = _BY_ID.get(_ALIASES.get(model_id, model_id))
    if model is None:
        raise DemoError(404, f"model: {model_id}")
    return model


def _index_of(model_id: str) -> int:
    model = _BY_ID.get(model_id)
    if model is None:
        raise invalid_request(f"Unknown model id in cursor: {model_id}")
    return MODELS.index(model)


def list_models(limit: str | None, after_id: str | None, before_id: str | None) -> dict[str, Any]:
    """One page of the catalogue; `before_id` pages backwards, `after_id` forwards."""
    try:
        size = DEFAULT_LIMIT if limit is None else int(limit)
    except ValueError:
        raise invalid_request("limit: Input should be a valid integer") from None
    if not 1 <= size <= MAX_LIMIT:
        raise invalid_request(f"limit: Input should be between 1 and {MAX_LIMIT}")
    if before_id:
        end = _index_of(before_id)
        start = max(0, end - size)
        page, has_more = MODELS[start:end], start > 0
    else:
        start = _index_of(after_id) + 1 if after_id else 0
        page, has_more = MODELS[start : start + size], start + size < len(MODELS)
    return {
        "data": list(page),
        "has_more": has_more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
