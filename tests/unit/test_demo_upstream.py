"""The demo upstream's pure parts: its documented input-token rule and the replies it builds.
Its wire format, through the real SDK and on a socket, is in tests/integration/test_demo_upstream.py."""

from __future__ import annotations

from typing import Any

from meter.upstream_demo.replies import build_reply, demo_text, tool_input
from meter.upstream_demo.tokens import count_input_tokens

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "hours": {"type": "array", "items": {"type": "integer"}},
        "options": {"type": "object"},
        "note": {"type": "string"},
    },
    "required": ["city", "days", "metric", "hours", "options"],
}


def test_input_tokens_follow_the_documented_rule() -> None:
    body = {
        "system": [{"type": "text", "text": "x" * 9}],  # 3
        "messages": [
            {"role": "user", "content": "abcd"},  # 1
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": ""},  # 1 (minimum per piece)
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},  # 1600
                    {"type": "document", "source": {"type": "text", "data": "d"}},  # 1600
                    {"type": "tool_use", "id": "t", "name": "n", "input": {"a": 1}},  # '{"a":1}' -> 2
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "12345"}],
                    },
                ],  # tool_result text: 2
            },
        ],
        "tools": [{"name": "t"}],  # '[{"name":"t"}]' is 14 chars -> 4
    }
    assert count_input_tokens(body) == 3 + 1 + 1 + 1600 + 1600 + 2 + 2 + 4
    assert count_input_tokens({"messages": []}) == 1


def test_tool_input_fills_required_properties() -> None:
    assert tool_input(WEATHER_SCHEMA) == {"city": "demo", "days": 1, "metric": True, "hours": [], "options": {}}
    assert tool_input({"properties": {"u": {"enum": ["c", "f"]}}, "required": ["u"]}) == {"u": "c"}
    assert tool_input(None) == {}


def test_text_reply_is_cut_at_max_tokens() -> None:
    reply = build_reply({"messages": []}, requested_tokens=7, max_tokens=5)
    assert reply.stop_reason == "max_tokens"
    assert reply.output_tokens == 5
    assert demo_text(3) == "word1 word2 word3"
