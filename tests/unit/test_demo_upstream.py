"""The demo upstream's pure parts: its documented input-token rule, the replies it builds, the usage
its `x-demo-*` controls put in a Message, `message_start` and `message_delta`, and the stream split
into pieces. Its wire format, through the real SDK and on a socket, is in
tests/integration/test_demo_upstream.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from multidict import CIMultiDict

from meter.upstream_demo import wire
from meter.upstream_demo.config import DemoConfig
from meter.upstream_demo.controls import Controls, default_controls, read_controls
from meter.upstream_demo.errors import DemoError
from meter.upstream_demo.replies import build_reply, demo_text, tool_input
from meter.upstream_demo.streaming import PIECE_MAX, Pieces
from meter.upstream_demo.tokens import count_input_tokens
from meter.upstream_demo.usage import asks_for_1h_cache, reply_usage

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


CONFIG = DemoConfig(output_tokens=12)
BODY: dict[str, Any] = {"model": "claude-opus-4-8", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


def controls(**headers: str) -> Controls:
    return read_controls(CIMultiDict(headers), CONFIG)


def usages(body: dict[str, Any], **headers: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The usage of the JSON reply, of message_start and of message_delta, as the bytes carry them."""
    reply = build_reply(body, CONFIG.output_tokens, body["max_tokens"])
    usage = reply_usage(body, controls(**headers), count_input_tokens(body), reply.output_tokens)
    message = json.loads(wire.message_body("msg_1", body["model"], reply, usage))
    events = [json.loads(item.data.split(b"data: ", 1)[1]) for item in wire.stream_frames("msg_1", "m", reply, usage)]
    (start,) = [event for event in events if event["type"] == "message_start"]
    (delta,) = [event for event in events if event["type"] == "message_delta"]
    return message["usage"], start["message"]["usage"], delta["usage"]


def test_a_request_without_demo_headers_is_not_parsed() -> None:
    assert read_controls(CIMultiDict({"anthropic-version": "2023-06-01"}), CONFIG) is default_controls(CONFIG)
    assert controls(**{"X-Demo-Output-Tokens": "3"}).output_tokens == 3  # header names are case-insensitive


def test_default_usage_is_standard_tier_geo_not_available_and_nothing_else() -> None:
    full, start, delta = usages(BODY)
    assert full == {
        "input_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 12,
        "service_tier": "standard",
        "inference_geo": "not_available",
    }
    assert start == {**full, "output_tokens": 1}  # message_start's output is a placeholder
    assert delta == {
        "input_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 12,
    }


def test_every_billable_field_in_all_three_places() -> None:
    headers = {
        "x-demo-input-tokens": "250000",
        "x-demo-cache-write-5m": "40",
        "x-demo-cache-write-1h": "2",
        "x-demo-cache-read": "30",
        "x-demo-web-search": "3",
        "x-demo-web-fetch": "0",
        "x-demo-service-tier": "batch",
        "x-demo-inference-geo": "us",
        "x-demo-speed": "fast",
        "x-demo-usage-extra": '{"future_fee_units": 4}',
    }
    full, start, delta = usages(BODY, **headers)
    tools = {"web_search_requests": 3, "web_fetch_requests": 0}
    assert full == {
        "input_tokens": 250_000,
        "cache_creation_input_tokens": 42,
        "cache_read_input_tokens": 30,
        "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 2},
        "output_tokens": 12,
        "server_tool_use": tools,
        "service_tier": "batch",
        "inference_geo": "us",
        "speed": "fast",
        "future_fee_units": 4,
    }
    assert start == {**full, "output_tokens": 1}
    # Cumulative counters and the server tools; never the split, the tier, the geo or the speed.
    assert delta == {
        "input_tokens": 250_000,
        "cache_creation_input_tokens": 42,
        "cache_read_input_tokens": 30,
        "output_tokens": 12,
        "server_tool_use": tools,
        "future_fee_units": 4,
    }


def test_server_tool_use_has_only_the_keys_given() -> None:
    full, start, delta = usages(BODY, **{"x-demo-web-fetch": "2"})
    assert full["server_tool_use"] == start["server_tool_use"] == delta["server_tool_use"] == {"web_fetch_requests": 2}
    assert "server_tool_use" not in usages(BODY)[0]


def test_geo_and_speed_echo_the_body_unless_a_header_says_otherwise() -> None:
    body = {**BODY, "inference_geo": "us", "speed": "fast"}
    assert [usages(body)[0][name] for name in ("inference_geo", "speed")] == ["us", "fast"]
    overridden = usages(body, **{"x-demo-inference-geo": "global", "x-demo-speed": "standard"})[0]
    assert (overridden["inference_geo"], overridden["speed"]) == ("global", "standard")
    assert "speed" not in usages(BODY)[0]


def test_compaction_iterations_list_both_steps_and_keep_the_top_level_counters_of_the_last() -> None:
    headers = {"x-demo-iterations": "compaction", "x-demo-cache-write-1h": "7", "x-demo-cache-read": "5"}
    full, start, delta = usages(BODY, **headers)
    message_step = {
        "type": "message",
        "input_tokens": 1,
        "cache_creation_input_tokens": 7,
        "cache_read_input_tokens": 5,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 7},
        "output_tokens": 12,
    }
    assert full["iterations"] == [{"type": "compaction", "input_tokens": 5000, "output_tokens": 300}, message_step]
    assert (full["input_tokens"], full["output_tokens"]) == (1, 12)
    assert delta["iterations"] == full["iterations"]
    assert start["iterations"][1] == {**message_step, "output_tokens": 1}
    sized = usages(
        BODY, **{"x-demo-iterations": "compaction", "x-demo-compaction-input": "9", "x-demo-compaction-output": "8"}
    )
    assert sized[0]["iterations"][0] == {"type": "compaction", "input_tokens": 9, "output_tokens": 8}


def test_late_cache_writes_appear_only_in_message_delta() -> None:
    _, start, delta = usages(BODY, **{"x-demo-cache-write-1h": "100", "x-demo-cache-write-late": "400"})
    assert start["cache_creation_input_tokens"] == 100
    assert start["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 100}
    assert delta["cache_creation_input_tokens"] == 500 and "cache_creation" not in delta


def test_a_1h_cache_is_found_anywhere_in_the_body() -> None:
    nested = {"messages": [{"content": [{"type": "text", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    assert asks_for_1h_cache(nested) and asks_for_1h_cache({"cache_control": {"ttl": "1h"}})
    assert not asks_for_1h_cache({"system": [{"cache_control": {"type": "ephemeral"}}]})


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-demo-service-tier", "gold"),
        ("x-demo-speed", "slow"),
        ("x-demo-iterations", "advisor"),
        ("x-demo-usage-extra", "[1]"),
        ("x-demo-usage-extra", "{"),
        ("x-demo-web-search", "-1"),
        ("x-demo-input-tokens", "many"),
        ("x-demo-split", "x"),
        ("x-demo-inference-geo", ""),
    ],
)
def test_malformed_controls_are_a_400(header: str, value: str) -> None:
    with pytest.raises(DemoError) as caught:
        controls(**{header: value})
    assert caught.value.status == 400 and header in caught.value.message


def split(data: bytes, seed: int) -> list[bytes]:
    written: list[bytes] = []

    async def write(piece: bytes) -> None:
        written.append(piece)

    async def run() -> None:
        pieces = Pieces(write, seed)
        for start in range(0, len(data), 100):  # fed frame by frame, as the server does
            await pieces.write(data[start : start + 100])
        await pieces.flush()

    asyncio.run(run())
    return written


def test_a_split_stream_is_the_same_bytes_in_seeded_pieces_that_cut_events() -> None:
    reply = build_reply(BODY, 30, 64)
    usage = reply_usage(BODY, default_controls(CONFIG), 1, reply.output_tokens)
    data = b"".join(item.data for item in wire.stream_frames("msg_1", "m", reply, usage))
    pieces = split(data, 7)
    assert b"".join(pieces) == data
    assert all(1 <= len(piece) <= PIECE_MAX for piece in pieces)
    assert len({len(piece) for piece in pieces}) > 10  # sizes vary
    assert any(b"\n\n" in piece[1:-1] for piece in pieces)  # some piece ends one event and starts the next
    assert any(not piece.endswith(b"\n\n") for piece in pieces[:-1])  # and some cut one
    assert split(data, 7) == pieces and split(data, 8) != pieces
