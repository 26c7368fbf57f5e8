"""An incremental reader of Anthropic's SSE stream that keeps only what metering needs.

Chunks are fed as they pass through the proxy, split anywhere: inside a line, between `\\r` and
`\\n`, inside a multi-byte character. Line ends may be `\\n`, `\\r\\n` or `\\r`; comments and
unknown events are skipped. Only `message_start`, `message_delta` and `error` are decoded; the
many `content_block_delta` events are counted, not parsed, to keep the proxy cheap.
"""

from __future__ import annotations

import msgspec

from meter.usage import Usage

_decode = msgspec.json.decode
_WANTED = frozenset({b"message_start", b"message_delta", b"message_stop", b"error"})


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
        self._buffer = b""
        self._skip_lf = False
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        # A chunk ending in \r may be half of a \r\n: skip the \n if the next chunk starts with it.
        self._skip_lf = chunk[-1:] == b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            return
        self._buffer = buffer[end + 1 :]
        for line in buffer[:end].split(b"\n"):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
        elif line.startswith(b"data:"):
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()
        # Anything else is a comment (":...") or a field meter does not use (id, retry).

    def _dispatch(self) -> None:
        event, data = self._event, self._data
        self._event, self._data = b"", []
        if not data:
            return
        if event == b"content_block_delta":
            self.delta_events += 1
            return
        if event and event not in _WANTED:
            return
        try:
            payload = _decode(b"\n".join(data))
        except msgspec.DecodeError:
            return
        if not isinstance(payload, dict):
            return
        kind = payload.get("type") if not event else event.decode()
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
