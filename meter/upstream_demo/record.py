"""What the demo upstream has answered, kept so it can serve Anthropic's usage and cost reports.

Every reply that was sent whole (not a failure the test asked for) adds its counters to a running
total per UTC minute, model and how the call ran (tier, context window, geo, speed): a few list
additions per reply, and memory bounded by minutes x combinations rather than by requests, since
the demo is also the upstream of benchmarks. A compaction step is recorded as a step of its own,
with its own context window, as it is billed.

Adjustments (POST /_demo/report-adjustments) are kept apart from what was answered: tests add
them to make the reports disagree with the ledger on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple

from meter.upstream_demo.prices import context_window
from meter.upstream_demo.usage import Usage

# The positions of a total's counters.
UNCACHED, WRITE_5M, WRITE_1H, READ, OUTPUT, WEB_SEARCHES = range(6)
COUNTERS = 6


class Key(NamedTuple):
    """The finest grain the reports can be cut at."""

    minute: int  # Unix time of the minute's start (UTC)
    model: str
    service_tier: str
    context_window: str
    inference_geo: str
    speed: str | None


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A discrepancy added to the reports: `output_tokens` to the usage report and `usd` to the cost
    report, for `model` on `day`, as if that many standard output tokens had been billed at 00:00."""

    model: str
    day: date
    usd: Decimal
    output_tokens: int

    def as_json(self) -> dict[str, Any]:
        day, usd = self.day.isoformat(), str(self.usd)
        return {"model": self.model, "day": day, "usd": usd, "output_tokens": self.output_tokens}


class Record:
    def __init__(self) -> None:
        self.totals: dict[Key, list[int]] = {}
        self.adjustments: list[Adjustment] = []

    def add(self, when: float, model: str, usage: Usage, late_writes_1h: bool) -> None:
        """Record one reply answered at `when` (Unix time). Cache writes a stream reports late are
        of the TTL the request asked for: 1h if it asked for a 1h cache anywhere, else 5m."""
        minute = int(when) // 60 * 60
        late = usage.cache_write_late
        late_5m, late_1h = (0, late) if late_writes_1h else (late, 0)
        message = (
            usage.input_tokens,
            usage.cache_write_5m + late_5m,
            usage.cache_write_1h + late_1h,
            usage.cache_read,
            usage.output_tokens,
        )
        searches = usage.server_tool_use.get("web_search_requests", 0) if usage.server_tool_use else 0
        if usage.compaction is not None:
            compaction_input, compaction_output = usage.compaction
            self._add(minute, model, usage, (compaction_input, 0, 0, 0, compaction_output), 0)
        self._add(minute, model, usage, message, searches)

    def _add(self, minute: int, model: str, usage: Usage, step: tuple[int, ...], searches: int) -> None:
        window = context_window(step[UNCACHED] + step[WRITE_5M] + step[WRITE_1H] + step[READ])
        key = Key(minute, model, usage.service_tier, window, usage.inference_geo, usage.speed)
        total = self.totals.get(key)
        if total is None:
            total = self.totals[key] = [0] * COUNTERS
        for index, count in enumerate(step):
            total[index] += count
        total[WEB_SEARCHES] += searches
