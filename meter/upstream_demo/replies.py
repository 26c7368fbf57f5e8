"""What the demo upstream answers: the reply content, its stop reason and its output-token count.

Deterministic so tests can predict usage: a text reply is `word1 word2 ...`, one output token per
word; a tool call costs `len(input JSON) // 4 + 10` tokens on top of its short lead-in sentence.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_BASE62 = string.ascii_letters + string.digits

# Placeholder values that satisfy the JSON-schema type of a required tool parameter.
_SCHEMA_DEFAULTS: dict[str, Any] = {
    "string": "demo",
    "number": 1,
    "integer": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


@dataclass(frozen=True, slots=True)
class TextBlock:
    text: str
    words: int


@dataclass(frozen=True, slots=True)
class ToolUseBlock:
    id: str
    name: str
    input: dict[str, Any]
    # The exact JSON the stream sends as `input_json_delta` pieces.
    input_json: str


Block = TextBlock | ToolUseBlock


@dataclass(frozen=True, slots=True)
class Reply:
    content: tuple[Block, ...]
    stop_reason: str
    output_tokens: int


def random_base62(length: int) -> str:
    # `random` rather than `secrets`: ids only need to be unique-looking, and this is the hot path.
    return "".join(random.choices(_BASE62, k=length))


@lru_cache(maxsize=256)
def demo_text(words: int) -> str:
    """`word1 word2 ... wordN`; cached because benchmarks ask for the same few lengths."""
    return " ".join(f"word{i}" for i in range(1, words + 1))


def _placeholder(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "demo"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):  # e.g. ["string", "null"]: use the first concrete type
        kind = next((k for k in kind if k != "null"), "string")
    value = _SCHEMA_DEFAULTS.get(kind, "demo") if isinstance(kind, str) else "demo"
    # Fresh containers, so no two replies share a mutable default.
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def tool_input(input_schema: Any) -> dict[str, Any]:
    """An input object holding a placeholder for every required property of `input_schema`."""
    if not isinstance(input_schema, dict):
        return {}
    properties = input_schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = input_schema.get("required")
    if not isinstance(required, list):
        return {}
    return {name: _placeholder(properties.get(name)) for name in required if isinstance(name, str)}


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool the demo calls, or None when the reply should be plain text."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if not named:
        return None
    choice = body.get("tool_choice")
    choice_type = choice.get("type") if isinstance(choice, dict) else None
    if choice_type == "none":
        return None
    if _answers_tool_result(body.get("messages")):
        # The model already has the tool's output: answer in text, or a client's tool loop never ends.
        return None
    if choice_type == "tool":
        wanted = choice.get("name") if isinstance(choice, dict) else None
        for tool in named:
            if tool["name"] == wanted:
                return tool
    return named[0]


def _answers_tool_result(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return isinstance(content, list) and any(
                isinstance(block, dict) and block.get("type") == "tool_result" for block in content
            )
    return False


def build_reply(body: dict[str, Any], requested_tokens: int, max_tokens: int) -> Reply:
    """The reply to a validated Messages request body.

    `requested_tokens` is the text length the caller asked for (config or `x-demo-output-tokens`);
    a text reply longer than `max_tokens` is cut and stops with `max_tokens`.
    """
    tool = _chosen_tool(body)
    if tool is not None:
        name: str = tool["name"]
        lead_in = f"I'll use {name}."
        arguments = tool_input(tool.get("input_schema"))
        arguments_json = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
        lead_words = len(lead_in.split())
        return Reply(
            content=(
                TextBlock(lead_in, lead_words),
                ToolUseBlock("toolu_" + random_base62(24), name, arguments, arguments_json),
            ),
            stop_reason="tool_use",
            output_tokens=lead_words + len(arguments_json) // 4 + 10,
        )
    words = min(requested_tokens, max_tokens)
    stop_reason = "max_tokens" if requested_tokens > max_tokens else "end_turn"
    return Reply(content=(TextBlock(demo_text(words), words),), stop_reason=stop_reason, output_tokens=words)
