"""The comparison of the upstream's reports with the ledger: one bucket per UTC day and model.

A model is the id the upstream answered with (the ledger's `response_model`, else the model asked
for), which is what the upstream's reports name. Costs the upstream reports without a model (web
searches, code execution) are buckets of their own, named by their cost type in parentheses; the
ledger's fees go to the same buckets, and its token costs (cost minus fees) to the model's.

What the upstream's cost report leaves out is kept out of the USD comparison on both sides:
priority-tier calls (their ledger cost is shown as `priority_usd`) and code execution, which meter
does not meter (its bucket shows the upstream's cost and no drift). An unpriced ledger row
(cost_usd NULL) is counted as such: its tokens are compared, its cost is not taken as $0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from meter.money import usd, usd_or_none

# The counters compared in each bucket: the usage report's names, the 5m/1h split spelt out; and
# their short names in a table.
KINDS = (
    "uncached_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "web_search_requests",
)
SHORT = dict(zip(KINDS, ("input", "write_5m", "write_1h", "read", "output", "searches"), strict=True))
# The cost report's model-less lines, and which of the ledger's fees each is charged as.
WEB_SEARCH = "(web_search)"
CODE_EXECUTION = "(code_execution)"
FEE_LINES = {"web_search_requests": WEB_SEARCH}
NOT_METERED = frozenset({CODE_EXECUTION})

BucketKey = tuple[date, str]


def cost_line(cost_type: str) -> str:
    """The bucket of a model-less cost line of the upstream's cost report."""
    return f"({cost_type})"


def fee_line(fee: str) -> str:
    """The bucket a ledger fee is charged in (fees are named by their server-tool counter)."""
    return FEE_LINES.get(fee, f"({fee})")


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


@dataclass
class Side:
    """One side's totals of a bucket."""

    counts: dict[str, int] = field(default_factory=_zero_counts)
    usd: Decimal = Decimal(0)


@dataclass
class LedgerSide(Side):
    requests: int = 0
    # Rows without a price: their tokens are in `counts`, their cost is unknown (not $0).
    unpriced_requests: int = 0
    # Rows whose usage is partial or estimated (a stream cut before its final usage).
    partial_requests: int = 0
    # The cost of priority-tier rows: not in the upstream's cost report, so not in `usd`.
    priority_usd: Decimal = Decimal(0)
    # Whether any row of the bucket was priced: if none was and some were not, `usd` means nothing.
    priced: bool = False

    @property
    def known_usd(self) -> Decimal | None:
        return None if self.unpriced_requests and not self.priced else self.usd


@dataclass
class Bucket:
    day: date
    model: str
    upstream: Side
    ledger: LedgerSide

    @property
    def compared(self) -> bool:
        """Whether the ledger can account for this bucket's cost at all."""
        return self.model not in NOT_METERED

    def drift(self) -> dict[str, int]:
        return {kind: self.upstream.counts[kind] - self.ledger.counts[kind] for kind in KINDS}

    @property
    def usd_drift(self) -> Decimal | None:
        """Upstream minus ledger, USD; with unpriced rows, what the upstream charged beyond what was
        billed. None for a bucket meter does not meter."""
        if not self.compared:
            return None
        return self.upstream.usd - self.ledger.usd

    def over(self, threshold: Decimal) -> bool:
        drift = self.usd_drift
        return drift is not None and abs(drift) > threshold

    def notes(self) -> list[str]:
        notes = []
        if not self.compared:
            notes.append("not metered by meter")
        if self.ledger.unpriced_requests:
            notes.append(f"{self.ledger.unpriced_requests} unpriced rows")
        if self.ledger.partial_requests:
            notes.append(f"{self.ledger.partial_requests} partial rows")
        if self.ledger.priority_usd:
            notes.append(f"priority tier ${usd(self.ledger.priority_usd)} not compared")
        return notes

    def as_json(self, threshold: Decimal) -> dict[str, Any]:
        ledger = self.ledger
        return {
            "day": self.day.isoformat(),
            "model": self.model,
            "upstream": {**self.upstream.counts, "usd": usd(self.upstream.usd)},
            "ledger": {
                **ledger.counts,
                "usd": usd_or_none(ledger.known_usd),
                "requests": ledger.requests,
                "unpriced_requests": ledger.unpriced_requests,
                "partial_requests": ledger.partial_requests,
                "priority_usd": usd(ledger.priority_usd),
            },
            "drift": {**self.drift(), "usd": usd_or_none(self.usd_drift)},
            "over_threshold": self.over(threshold),
            "notes": self.notes(),
        }

    def row(self, threshold: Decimal) -> dict[str, Any]:
        """A flat record for a table or CSV: the drift of each counter, and both sides' USD."""
        known = self.ledger.known_usd
        return {
            "day": self.day.isoformat(),
            "model": self.model,
            "requests": self.ledger.requests,
            **{f"{SHORT[kind]}_drift": count for kind, count in self.drift().items()},
            "upstream_usd": usd(self.upstream.usd),
            "ledger_usd": "unpriced" if known is None else usd(known),
            "usd_drift": usd_or_none(self.usd_drift),
            "over": "OVER" if self.over(threshold) else "",
            "notes": "; ".join(self.notes()),
        }


@dataclass
class Report:
    start: date
    end: date  # exclusive
    threshold: Decimal
    buckets: list[Bucket]

    @property
    def over_threshold(self) -> list[Bucket]:
        return [bucket for bucket in self.buckets if bucket.over(self.threshold)]

    def summary(self) -> str:
        """One line: how many buckets agree, and which do not."""
        over = self.over_threshold
        head = f"{len(self.buckets)} buckets from {self.start} to {self.end} (exclusive)"
        if not over:
            return f"{head}: every USD drift within ${usd(self.threshold)}"
        which = ", ".join(f"{b.day} {b.model} ({_signed(b.usd_drift)})" for b in over)
        return f"{head}: {len(over)} over the ${usd(self.threshold)} threshold: {which}"

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "threshold_usd": usd(self.threshold),
            "over_threshold": [{"day": b.day.isoformat(), "model": b.model} for b in self.over_threshold],
            "buckets": [bucket.as_json(self.threshold) for bucket in self.buckets],
        }


def _signed(value: Decimal | None) -> str:
    text = usd(value or 0)
    return f"-${text[1:]}" if text.startswith("-") else f"+${text}"


def compare(
    start: date, end: date, threshold: Decimal, upstream: dict[BucketKey, Side], ledger: dict[BucketKey, LedgerSide]
) -> Report:
    """Every bucket either side has, in (day, model) order."""
    buckets = [
        Bucket(day, model, upstream.get((day, model), Side()), ledger.get((day, model), LedgerSide()))
        for day, model in sorted(upstream.keys() | ledger.keys())
    ]
    return Report(start, end, threshold, buckets)
