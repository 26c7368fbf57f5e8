"""Token usage of one call, as Anthropic reports it, and how reports are merged.

A JSON reply has one `usage`. A stream has `message_start.message.usage` (everything, including
the 5m/1h cache-write split) and then `message_delta.usage` events that are cumulative: each
field present overrides the one before (the SDK's accumulator does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COUNTERS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # None until a report carries the `cache_creation` split.
    cache_creation_5m_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None

    def update(self, report: Any) -> None:
        """Apply one `usage` object: every counter it has overrides ours."""
        if not isinstance(report, dict):
            return
        for name in COUNTERS:
            value = report.get(name)
            if isinstance(value, int):
                setattr(self, name, value)
        split = report.get("cache_creation")
        if isinstance(split, dict):
            self.cache_creation_5m_input_tokens = _int(split.get("ephemeral_5m_input_tokens"))
            self.cache_creation_1h_input_tokens = _int(split.get("ephemeral_1h_input_tokens"))

    def cache_write_split(self) -> tuple[int, int]:
        """(5m, 1h) cache-write tokens summing to `cache_creation_input_tokens`.

        Without a split, all writes are 5m (Anthropic's default TTL). If a later delta changed the
        total, the difference is attributed to 5m, the cheaper kind, never silently dropped.
        """
        total = self.cache_creation_input_tokens
        one_hour = min(self.cache_creation_1h_input_tokens or 0, total)
        return total - one_hour, one_hour

    @property
    def total_tokens(self) -> int:
        """What token limits count: input, output and cache tokens alike."""
        return sum(getattr(self, name) for name in COUNTERS)


def total_tokens_of(columns: Any) -> Any:
    """`Usage.total_tokens` as a SQL expression over a table's columns (`table.c`)."""
    return sum((columns[name] for name in COUNTERS[1:]), columns[COUNTERS[0]])


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0
