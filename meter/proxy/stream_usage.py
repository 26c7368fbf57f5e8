"""An incremental reader of Anthropic's SSE stream that keeps only what metering needs.

Chunks are fed as they pass through the proxy, split anywhere (meter.sse splits them into
events); unknown events are skipped. Only `message_start`, `message_delta` and `error` are decoded; the
many `content_block_delta` events are counted, not parsed, to keep the proxy cheap.
"""

from __future__ import annotations

import msgspec

from meter.sse import SSEEvents
from meter.usage import Usage

_decode = msgspec.json.decode
_WANTED = frozenset({"message_start", "message_delta", "message_stop", "error"})


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
        self._events = SSEEvents()

    def feed(self, chunk: bytes) -> None:
        for name, data in self._events.feed(chunk):
            self._dispatch(name, data)

    def _dispatch(self, event: str, data: bytes) -> None:
        if event == "content_block_delta":
            self.delta_events += 1
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

    @property
    def complete(self) -> bool:
        """The final usage arrived: a message_delta, or an upstream that ended with message_stop."""
        return self.saw_delta or self.saw_stop

    def final_usage(self) -> tuple[Usage, bool]:
        """The usage to record and whether it is partial.

        Without a message_delta, output_tokens is only message_start's placeholder; each content
        delta carries at least one token, so their count is a floor that never records $0 for a
        stream that produced text.
        """
        if self.complete:
            return self.usage, False
        self.usage.output_tokens = max(self.usage.output_tokens, self.delta_events)
        return self.usage, True
