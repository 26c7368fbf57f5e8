"""An incremental reader of Anthropic's SSE stream that keeps only what metering needs.

Chunks are fed as they pass through the proxy, split anywhere (meter.sse splits them into
events); unknown events are skipped. Only `message_start`, `message_delta` and `error` are decoded; the
many `content_block_delta` events are counted and measured, not parsed, to keep the proxy cheap.
"""

from __future__ import annotations

import msgspec

from meter.sse import SSEEvents
from meter.usage import Usage

_decode = msgspec.json.decode
_WANTED = frozenset({"message_start", "message_delta", "message_stop", "error"})
# A content delta's JSON around its text, thinking or partial tool input, about:
# {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}
DELTA_ENVELOPE_BYTES = 80
# Claude's tokenizers average 3.5 to 4 bytes of English per token: a cut stream's output is
# estimated at one token per BYTES_PER_TOKEN bytes it delivered (and at least one per delta).
BYTES_PER_TOKEN = 4


class StreamUsageReader:
    def __init__(self) -> None:
        self.usage = Usage()
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.error_type: str | None = None
        self.saw_start = False
        self.saw_delta = False
        self.saw_stop = False
        self.delta_events = 0
        self.delta_bytes = 0
        self._events = SSEEvents()

    def feed(self, chunk: bytes) -> None:
        for name, data in self._events.feed(chunk):
            self._dispatch(name, data)

    def _dispatch(self, event: str, data: bytes) -> None:
        if event == "content_block_delta":
            self.delta_events += 1
            self.delta_bytes += len(data)
            return
        if event and event not in _WANTED:
            return
        try:
            payload = _decode(data)
        except msgspec.DecodeError:
            return
        if not isinstance(payload, dict):
            return
        kind = event or payload.get("type")
        if kind == "message_start":
            message = payload.get("message") or {}
            self.saw_start = True
            self.model = message.get("model") if isinstance(message.get("model"), str) else self.model
            self.usage.update(message.get("usage"))
        elif kind == "message_delta":
            self.saw_delta = True
            self.usage.update(payload.get("usage"))
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
        elif kind == "message_stop":
            self.saw_stop = True
        elif kind == "error":
            error = payload.get("error")
            self.error_type = error.get("type", "error") if isinstance(error, dict) else "error"
        elif kind == "content_block_delta":
            self.delta_events += 1
            self.delta_bytes += len(data)

    @property
    def complete(self) -> bool:
        """The final usage arrived: a message_delta, or an upstream that ended with message_stop."""
        return self.saw_delta or self.saw_stop

    def final_usage(self) -> tuple[Usage, bool]:
        """The usage to record and whether it is partial.

        Without a message_delta, output_tokens is only message_start's placeholder: the output is
        then estimated from what the client received (text, thinking and tool input bytes), at
        least one token per delta, so a stream that produced content never records $0.
        """
        if self.complete:
            return self.usage, False
        content = max(0, self.delta_bytes - self.delta_events * DELTA_ENVELOPE_BYTES)
        received = max(self.delta_events, -(-content // BYTES_PER_TOKEN))
        self.usage.output_tokens = max(self.usage.output_tokens, received)
        return self.usage, True
