"""What the demo upstream checks of a Messages request body, as Anthropic's API does (a 400 naming
the first missing or malformed field); used by the Messages endpoint and by each request of a batch."""

from __future__ import annotations

from typing import Any

from meter.upstream_demo.errors import invalid_request


def validate_messages_body(body: dict[str, Any]) -> tuple[str, int]:
    """The request's model and max_tokens; a 400 naming the first missing or malformed field."""
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            raise invalid_request(f"{field}: Field required")
    model, max_tokens = body["model"], body["max_tokens"]
    if not isinstance(model, str) or not model:
        raise invalid_request("model: Input should be a valid string")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise invalid_request("max_tokens: Input should be an integer greater than or equal to 1")
    if not isinstance(body["messages"], list):
        raise invalid_request("messages: Input should be a valid list")
    return model, max_tokens
