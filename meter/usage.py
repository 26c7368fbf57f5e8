"""Usage of one call, as Anthropic reports it, every billable field of it, and how reports merge.

A JSON reply has one `usage`. A stream has `message_start.message.usage` (everything, including
the 5m/1h cache-write split, the service tier and the inference geo) and then `message_delta.usage`
events that are cumulative: each field present overrides the one before (the SDK's accumulator
does the same). Fields meter does not know are kept in `extra`, so a new fee is never lost silently.

`iterations` (compaction, advisor and fallback sub-calls, beta) lists the usage of each sampling
step of the call; the top-level counters then cover only the final step, so the billed counters
are the sums over the iterations (`billed_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COUNTERS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# Known fields that are not counters of the four kinds; everything else goes to `extra`.
DESCRIBED = frozenset(
    {
        "cache_creation",
        "server_tool_use",
        "service_tier",
        "inference_geo",
        "speed",
        "iterations",
        "output_tokens_details",
    }
)


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # None until a report carries the `cache_creation` split.
    cache_creation_5m_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None
    # Units of each server tool, by counter name: {"web_search_requests": 3, "web_fetch_requests": 1}.
    server_tool_use: dict[str, int] = field(default_factory=dict)
    # How the call ran: "standard" | "priority" | "batch"; "us" | "global" | "not_available"; "fast".
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None
    iterations: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # When the 5m/1h split is unknown for cache writes, the costlier TTL is assumed if the request
    # asked for a 1h cache (set by the recorder from the request), else Anthropic's default 5m.
    writes_default_1h: bool = False

    def update(self, report: Any) -> None:
        """Apply one `usage` object: every field it has overrides ours."""
        if not isinstance(report, dict):
            return
        for name in COUNTERS:
            value = _count(report.get(name))
            if value is not None:
                setattr(self, name, value)
        split = report.get("cache_creation")
        if isinstance(split, dict):
            self.cache_creation_5m_input_tokens = _count(split.get("ephemeral_5m_input_tokens")) or 0
            self.cache_creation_1h_input_tokens = _count(split.get("ephemeral_1h_input_tokens")) or 0
        tools = report.get("server_tool_use")
        if isinstance(tools, dict):
            self.server_tool_use = {k: v for k, v in tools.items() if isinstance(k, str) and _count(v) is not None}
        for name in ("service_tier", "inference_geo", "speed"):
            value = report.get(name)
            if isinstance(value, str):
                setattr(self, name, value[:64])
        iterations = report.get("iterations")
        if isinstance(iterations, list):
            self.iterations = [step for step in iterations if isinstance(step, dict)]
        for name, value in report.items():
            if name not in DESCRIBED and name not in COUNTERS:
                self.extra[name] = value

    def cache_write_split(self) -> tuple[int, int]:
        """(5m, 1h) cache-write tokens summing to `cache_creation_input_tokens`.

        Without a split, all writes are of the default TTL. If a later delta changed the total, the
        difference goes to the default TTL too (the costlier one when the request asked for 1h):
        never silently dropped, never priced below what it may have cost.
        """
        total = self.cache_creation_input_tokens
        if self.cache_creation_1h_input_tokens is None and self.cache_creation_5m_input_tokens is None:
            return (0, total) if self.writes_default_1h else (total, 0)
        if self.writes_default_1h:
            five_minute = min(self.cache_creation_5m_input_tokens or 0, total)
            return five_minute, total - five_minute
        one_hour = min(self.cache_creation_1h_input_tokens or 0, total)
        return total - one_hour, one_hour

    @property
    def total_tokens(self) -> int:
        """What token limits count: input, output and cache tokens alike, over every sampling step."""
        if not self.iterations:  # one step, itself (billed_steps): the common case, without a list
            return self._step_tokens()
        return sum(step._step_tokens() for step in self.billed_steps())

    def _step_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def billed_steps(self) -> list[Usage]:
        """The usage of each sampling step the call is billed for: itself, or each of its iterations."""
        if not self.iterations:
            return [self]
        steps = []
        for report in self.iterations:
            step = Usage(writes_default_1h=self.writes_default_1h)
            step.update({name: value for name, value in report.items() if name != "iterations"})
            steps.append(step)
        return steps

    def billed_counters(self) -> dict[str, int]:
        """The four counters and the 5m/1h split as billed: summed over the sampling steps."""
        totals = dict.fromkeys((*COUNTERS, "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens"), 0)
        for step in self.billed_steps():
            five_minute, one_hour = step.cache_write_split()
            for name in COUNTERS:
                totals[name] += getattr(step, name)
            totals["cache_creation_5m_input_tokens"] += five_minute
            totals["cache_creation_1h_input_tokens"] += one_hour
        return totals

    @property
    def prompt_tokens(self) -> int:
        """Every input token of the last step, cached or not (what a long-context threshold reads)."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


def total_tokens_of(columns: Any) -> Any:
    """`Usage.total_tokens` as a SQL expression over a ledger row's columns (`table.c`)."""
    return sum((columns[name] for name in COUNTERS[1:]), columns[COUNTERS[0]])


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
