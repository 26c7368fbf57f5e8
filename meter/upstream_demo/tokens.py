"""Deterministic input-token accounting for the demo upstream.

Real tokenizers are not public, so the demo uses a rule a test can compute by hand:
every text piece costs `max(1, ceil(chars / 4))`, every image or document block costs 1600,
the tool definitions cost `ceil(len(compact JSON) / 4)`, and a request costs at least 1.
The same count answers `/v1/messages/count_tokens` and fills `usage.input_tokens`.
"""

from __future__ import annotations

import json
from typing import Any

# A flat charge per attachment: close to what a mid-size image or one PDF page costs upstream.
ATTACHMENT_TOKENS = 1600


def _text_tokens(text: str) -> int:
    # ceil(len / 4) without floats; an empty piece still costs one token.
    return max(1, (len(text) + 3) // 4)


def _json_tokens(value: Any) -> int:
    return _text_tokens(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _content_tokens(content: Any) -> int:
    """Tokens of a message `content` (or a tool_result `content`): a string or a list of blocks."""
    if isinstance(content, str):
        return _text_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            total += _text_tokens(str(block.get("text", "")))
        elif kind in ("image", "document"):
            total += ATTACHMENT_TOKENS
        elif kind == "tool_use":
            total += _json_tokens(block.get("input", {}))
        elif kind == "tool_result":
            total += _content_tokens(block.get("content", ""))
        # Other block kinds (thinking, redacted_thinking, server tool results) are not counted.
    return total


def count_input_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a Messages (or count_tokens) request body; at least 1."""
    total = 0
    system = body.get("system")
    if system is not None:
        total += _content_tokens(system)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _content_tokens(message.get("content", ""))
    tools = body.get("tools")
    if tools:
        total += _json_tokens(tools)
    return max(1, total)
