"""Server-sent events, read incrementally: bytes in, split anywhere, (event name, data) pairs out.

Used both to meter Anthropic streams (proxy/sse.py) and to translate them for OpenAI clients
(openai_compat/stream.py). Line ends may be `\\n`, `\\r\\n` or `\\r`, split across chunks too;
comments and fields other than `event` and `data` are skipped.
"""

from __future__ import annotations


class SSEEvents:
    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """The events completed by `chunk`, in order."""
        if not chunk:
            return []  # keeps _skip_lf: an empty chunk between \r and \n must not reset it
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
            return []
        self._buffer = buffer[end + 1 :]
        events: list[tuple[str, bytes]] = []
        for line in buffer[:end].split(b"\n"):
            if not line:
                if self._data:
                    events.append((self._event.decode("utf-8", "replace"), b"\n".join(self._data)))
                self._event, self._data = b"", []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
        return events

    def close(self) -> list[tuple[str, bytes]]:
        """End of input: the last line and event count even without their terminators."""
        self._skip_lf = False
        return self.feed(b"\n\n")
