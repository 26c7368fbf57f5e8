"""An Anthropic Messages JSON reply -> an OpenAI `chat.completion` object.

Also holds the two mappings the stream translator shares: stop_reason -> finish_reason and
Anthropic usage -> OpenAI usage. Thinking blocks, server-tool blocks and citations have no place
in OpenAI's message and are dropped; metering reads the native Anthropic usage, not this one.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meter.openai_compat.errors import UpstreamFormatError
from meter.usage import Usage

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # pause_turn: a server tool loop paused; the client sees an ordinary stop and may call again.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: Any) -> str:
    """OpenAI finish_reason; a stop_reason Anthropic adds later reads as a plain "stop"."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def thinking_tokens(report: Any) -> int | None:
    """`output_tokens_details.thinking_tokens` of a usage report, None when it has none."""
    details = report.get("output_tokens_details") if isinstance(report, dict) else None
    value = details.get("thinking_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def openai_usage(usage: Usage, reasoning_tokens: int) -> dict[str, Any]:
    """OpenAI's usage object: its prompt counts every input token, cached or not."""
    prompt = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read_input_tokens,
            # The openai SDK knows this field; it lets a client see what it paid cache-write prices for.
            "cache_write_tokens": usage.cache_creation_input_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": msgspec.json.encode(block.get("input", {})).decode()},
    }


def to_openai(anthropic_body: bytes, model: str, created: int) -> bytes:
    """The `chat.completion` JSON for an Anthropic Messages response body.

    `model` is echoed as given (the route passes the name the client asked for); `created` is a
    Unix timestamp, passed in to keep this function pure.
    """
    try:
        message = msgspec.json.decode(anthropic_body)
    except msgspec.DecodeError as exc:
        raise UpstreamFormatError(f"Upstream reply is not JSON: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise UpstreamFormatError("Upstream reply is not an Anthropic message.")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(tool_call(block))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    # OpenAI omits tool_calls when there are none; some clients test for the key.
    if calls:
        reply["tool_calls"] = calls
    usage = Usage()
    usage.update(message.get("usage"))
    completion = {
        "id": f"chatcmpl-{message.get('id', '')}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": reply, "finish_reason": finish_reason(message.get("stop_reason")), "logprobs": None}
        ],
        "usage": openai_usage(usage, thinking_tokens(message.get("usage")) or 0),
    }
    return msgspec.json.encode(completion)
