"""Anthropic Messages SSE -> OpenAI `chat.completion.chunk` SSE, one upstream chunk at a time.

The proxy feeds upstream bytes as they arrive, split anywhere (inside a line, between `\\r` and
`\\n`, inside a multi-byte character), and sends what `feed` returns straight away. Only the
unfinished last line and the current event's data lines are held back. OpenAI's stream has no
`event:` lines and ends with `data: [DONE]`; an upstream `error` event becomes a `data:` object
with an `error` key (the openai SDK raises `APIError` on it) and no `[DONE]` follows.

The finish_reason chunk is sent at `message_stop`, not at `message_delta`: a stream may carry
several cumulative message_delta events and the client must see exactly one finish_reason,
computed from the last of them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meter.openai_compat.errors import convert_anthropic_error, openai_error
from meter.openai_compat.response import finish_reason, openai_usage, thinking_tokens, tool_call
from meter.sse import SSEEvents
from meter.usage import Usage

_DONE = b"data: [DONE]\n\n"


class ChunkTranslator:
    """Translates one streamed Anthropic reply; `feed` each upstream chunk, then call `finish`."""

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.usage = Usage()
        self._reasoning_tokens = 0
        self._id = "chatcmpl-"
        self._started = False
        self._stop_reason: str | None = None
        self._done = False  # [DONE] or an error was sent; anything after is ignored
        self._tool_index: dict[Any, int] = {}  # Anthropic content-block index -> OpenAI tool_calls index
        self._reader = SSEEvents()

    def feed(self, chunk: bytes) -> bytes:
        """OpenAI SSE bytes to send now for this piece of the Anthropic stream (often b"")."""
        out: list[bytes] = []
        for name, data in self._reader.feed(chunk):
            self._event(name, data, out)
        return b"".join(out)

    def finish(self) -> bytes:
        """The tail, once the upstream stream has ended.

        A stream that stops after its message_delta is closed normally; one that stops earlier was
        cut off, and the client gets an error rather than a truncated answer that looks complete.
        """
        out: list[bytes] = []
        for name, data in self._reader.close():
            self._event(name, data, out)
        if not self._done:
            if self._stop_reason is not None:
                self._end(out)
            else:
                out.append(self.fail("The upstream stream ended before the message was complete."))
        return b"".join(out)

    def fail(self, message: str, type: str = "server_error", code: str | None = None) -> bytes:
        """An error chunk ending the stream (for the route when the upstream connection breaks)."""
        if self._done:
            return b""
        self._done = True
        return _frame(openai_error(message, type, code))

    def _event(self, name: str, data: bytes, out: list[bytes]) -> None:
        if self._done:
            return
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        if not isinstance(payload, dict):
            return
        # Like Anthropic's SDK: the event line decides, data.type stands in when it is missing.
        kind = name or payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                message_id = message.get("id")
                self._id = f"chatcmpl-{message_id if isinstance(message_id, str) else ''}"
                self._report(message.get("usage"))
            self._emit(out, {})
        elif kind == "content_block_start":
            self._block_start(payload, out)
        elif kind == "content_block_delta":
            self._block_delta(payload, out)
        elif kind == "message_delta":
            self._report(payload.get("usage"))
            delta = payload.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
        elif kind == "message_stop":
            self._end(out)
        elif kind == "error":
            self._done = True
            out.append(_frame(convert_anthropic_error(payload, None)))
        # ping, content_block_stop and event types added later carry nothing for OpenAI.

    def _report(self, report: Any) -> None:
        self.usage.update(report)
        reasoning = thinking_tokens(report)
        if reasoning is not None:
            self._reasoning_tokens = reasoning

    def _block_start(self, payload: dict[str, Any], out: list[bytes]) -> None:
        block = payload.get("content_block")
        if not isinstance(block, dict):
            return
        if block.get("type") == "tool_use":
            index = len(self._tool_index)
            self._tool_index[payload.get("index")] = index
            call = tool_call(block)
            # The input arrives as input_json_delta pieces; the start block carries an empty {}.
            if not block.get("input"):
                call["function"]["arguments"] = ""
            self._emit(out, {"tool_calls": [{"index": index, **call}]})
        elif block.get("type") == "text" and block.get("text"):
            self._emit(out, {"content": block["text"]})
        # thinking, redacted_thinking and server-tool blocks are not part of OpenAI's message.

    def _block_delta(self, payload: dict[str, Any], out: list[bytes]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            self._emit(out, {"content": delta["text"]})
        elif kind == "input_json_delta" and delta.get("partial_json"):
            # Deltas of server_tool_use blocks are not in the map: those tools ran at Anthropic.
            index = self._tool_index.get(payload.get("index"))
            if index is not None:
                self._emit(out, {"tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]})
        # thinking_delta, signature_delta and citations_delta are dropped.

    def _emit(self, out: list[bytes], delta: dict[str, Any], finish: str | None = None) -> None:
        if not self._started:
            # OpenAI's first chunk announces the role; send it even if message_start went missing.
            self._started = True
            out.append(self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
            if not delta and finish is None:
                return
        out.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": finish}]))

    def _end(self, out: list[bytes]) -> None:
        self._emit(out, {}, finish_reason(self._stop_reason))
        if self.include_usage:
            out.append(self._chunk([], openai_usage(self.usage, self._reasoning_tokens)))
        out.append(_DONE)
        self._done = True

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        for choice in choices:
            choice.setdefault("finish_reason", None)
            choice.setdefault("logprobs", None)
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return _frame(chunk)


def _frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"
