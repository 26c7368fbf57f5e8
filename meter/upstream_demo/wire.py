"""Anthropic's wire format for the demo upstream: Message JSON, SSE frames, error bodies.

Everything here returns bytes ready to write. Frames that do not depend on the request
(ping, message_stop, the deltas of a given text) are cached, because the demo upstream is the
fast side of every benchmark and re-encoding the same JSON per request would dominate its cost.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any, NamedTuple

from meter.upstream_demo.replies import Reply, TextBlock, ToolUseBlock, random_base62
from meter.upstream_demo.usage import Usage

JSON_CONTENT_TYPE = "application/json"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"

# Words per text_delta: Anthropic sends a few tokens per delta, and fewer frames keep the demo fast.
WORDS_PER_DELTA = 3
# input_json_delta pieces per tool_use block, so clients exercise their partial-JSON accumulation.
JSON_PIECES = 3

# Compact, ASCII-only JSON: one line per `data:` field whatever the model name or text holds.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def dumps(value: Any) -> bytes:
    return _encode(value).encode()


def loads(data: bytes) -> Any:
    return json.loads(data)


def new_message_id() -> str:
    return "msg_01" + random_base62(22)


def new_request_id() -> str:
    return "req_demo_" + random_base62(24)


# What Anthropic sends about the organization behind the key with every answer (protocol note,
# section 5): a proxy must keep these from its tenants.
ORGANIZATION_ID = "org-demo-operator-0001"
ORGANIZATION_LIMITS = {"requests": 4000, "tokens": 2_000_000, "input-tokens": 1_600_000, "output-tokens": 400_000}


@lru_cache(maxsize=2)
def _organization_headers(second: int) -> dict[str, str]:
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second + 1))
    headers = {"anthropic-organization-id": ORGANIZATION_ID, "set-cookie": "_cfuvid=demo-operator; Path=/; HttpOnly"}
    for family, limit in ORGANIZATION_LIMITS.items():
        prefix = f"anthropic-ratelimit-{family}"
        headers.update({f"{prefix}-limit": str(limit), f"{prefix}-remaining": str(limit - 1), f"{prefix}-reset": reset})
    return headers


def organization_headers() -> dict[str, str]:
    """The organization's id, a cookie and its organization-wide rate limits, current to the second."""
    return _organization_headers(int(time.time()))


def _block_json(block: TextBlock | ToolUseBlock) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}


def message_body(message_id: str, model: str, reply: Reply, usage: Usage) -> bytes:
    """The non-streaming response: one Message object."""
    return dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [_block_json(block) for block in reply.content],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": usage.full(usage.output_tokens),
        }
    )


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    return dumps({"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id})


def frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE event; `data.type` always equals the event name, as in Anthropic's streams."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


PING = frame("ping", {"type": "ping"})
MESSAGE_STOP = frame("message_stop", {"type": "message_stop"})


def error_frame(error_type: str, message: str) -> bytes:
    """An error after the 200 headers; no `message_stop` may follow it."""
    return frame("error", {"type": "error", "error": {"type": error_type, "message": message}})


class Frame(NamedTuple):
    """An SSE event to write. `tokens` > 0 marks a content delta carrying that many output tokens,
    which the server paces and counts before injecting a mid-stream failure."""

    data: bytes
    tokens: int = 0
    is_delta: bool = False


@lru_cache(maxsize=256)
def _text_frames(index: int, text: str) -> tuple[Frame, ...]:
    start = frame(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
    )
    frames = [Frame(start)]
    words = text.split(" ") if text else []
    for first in range(0, len(words), WORDS_PER_DELTA):
        chunk = words[first : first + WORDS_PER_DELTA]
        # Later chunks carry their leading space, so the deltas concatenate to the exact text.
        piece = " ".join(chunk) if first == 0 else " " + " ".join(chunk)
        delta = {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "text_delta", "text": piece},
        }
        frames.append(Frame(frame("content_block_delta", delta), len(chunk), True))
    frames.append(Frame(_block_stop(index)))
    return tuple(frames)


@lru_cache(maxsize=64)
def _block_stop(index: int) -> bytes:
    return frame("content_block_stop", {"type": "content_block_stop", "index": index})


def _tool_use_frames(index: int, block: ToolUseBlock) -> list[Frame]:
    start = {
        "type": "content_block_start",
        "index": index,
        "content_block": {"type": "tool_use", "id": block.id, "name": block.name, "input": {}},
    }
    frames = [Frame(frame("content_block_start", start))]
    text = block.input_json
    size = max(1, -(-len(text) // JSON_PIECES))
    for first in range(0, len(text), size):
        delta = {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": text[first : first + size]},
        }
        frames.append(Frame(frame("content_block_delta", delta), 0, True))
    frames.append(Frame(_block_stop(index)))
    return frames


def stream_frames(message_id: str, model: str, reply: Reply, usage: Usage) -> list[Frame]:
    """Every event of a streamed reply, in Anthropic's order:
    message_start, per block (content_block_start [ping after the first], deltas, content_block_stop),
    message_delta, message_stop."""
    start = {
        "type": "message_start",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Anthropic reports a placeholder output count here; the real one comes in message_delta.
            "usage": usage.full(1),
        },
    }
    frames = [Frame(frame("message_start", start))]
    for index, block in enumerate(reply.content):
        block_frames = (
            _text_frames(index, block.text) if isinstance(block, TextBlock) else _tool_use_frames(index, block)
        )
        frames.append(block_frames[0])
        if index == 0:
            frames.append(Frame(PING))
        frames.extend(block_frames[1:])
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
        "usage": usage.cumulative(),
    }
    frames.append(Frame(frame("message_delta", delta)))
    frames.append(Frame(MESSAGE_STOP))
    return frames
