"""The usage chart, drawn on the server: a bar per UTC day, stacked by model, as geometry the
template writes out as inline SVG (no script, nothing fetched, works offline). The table under the
chart carries the same numbers for screen readers and for copying."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Literal

from meter.admin.usage import DayModelUsage

Measure = Literal["cost", "tokens"]
# Distinguishable for the common colour-vision deficiencies, each at least 3:1 against white.
PALETTE = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0e7490", "#4d7c0f", "#b91c1c")
OTHER = "#6b7280"
WIDTH, HEIGHT = 800, 280
LEFT, RIGHT, TOP, BOTTOM = 84, 12, 12, 36


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass
class Chart:
    measure: Measure
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    grid: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    days: list[tuple[float, str]] = field(default_factory=list)  # (x, label)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (colour, model)
    baseline: float = HEIGHT - BOTTOM
    left: int = LEFT
    right: int = WIDTH - RIGHT
    empty: bool = True


def amount(row: DayModelUsage, measure: Measure) -> Decimal:
    if measure == "cost":
        return Decimal(row.cost_usd)
    return Decimal(row.input_tokens + row.output_tokens + row.cache_creation_input_tokens + row.cache_read_input_tokens)


def label(value: Decimal, measure: Measure) -> str:
    if measure == "cost":
        if 0 < value < Decimal("0.01"):  # a few test calls cost fractions of a cent: show them
            return "$" + f"{value:.6f}".rstrip("0")
        return f"${value:,.2f}" if value < 1000 else f"${value:,.0f}"
    for size, suffix in ((Decimal(10**9), "B"), (Decimal(10**6), "M"), (Decimal(10**3), "k")):
        if value >= size:
            return f"{value / size:,.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:,.0f}"


def nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `value`, so the grid reads in round steps."""
    if value <= 0:
        return Decimal(1)
    exponent = math.floor(math.log10(value))
    for step in (1, 2, Decimal("2.5"), 5, 10):
        candidate = Decimal(step) * Decimal(10) ** exponent
        if candidate >= value:
            return candidate
    return Decimal(10) ** (exponent + 1)


def stacked_by_day(rows: list[DayModelUsage], start: date, end: date, measure: Measure) -> Chart:
    chart = Chart(measure=measure)
    days = [start + timedelta(days=n) for n in range((end - start).days)]
    totals_by_model: dict[str, Decimal] = {}
    for row in rows:
        totals_by_model[row.model] = totals_by_model.get(row.model, Decimal(0)) + amount(row, measure)
    # The largest models get their own colour; the rest share grey.
    ranked = sorted(totals_by_model, key=lambda model: (-totals_by_model[model], model))
    colors = {model: PALETTE[n] for n, model in enumerate(ranked[: len(PALETTE)])}
    chart.legend = [(colors[model], model or "(no model)") for model in ranked[: len(PALETTE)]]
    if len(ranked) > len(PALETTE):
        chart.legend.append((OTHER, "other models"))
    per_day: dict[date, list[tuple[str, Decimal]]] = {}
    for row in rows:
        per_day.setdefault(row.day, []).append((row.model, amount(row, measure)))
    top = nice_ceiling(max((sum((v for _, v in parts), Decimal(0)) for parts in per_day.values()), default=Decimal(0)))
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(days))
    chart.grid = [(TOP + plot_height * (1 - n / 4), label(top * n / 4, measure)) for n in range(5)]
    every = max(1, math.ceil(len(days) / 8))
    chart.days = [(LEFT + slot * (n + 0.5), day.strftime("%b %d")) for n, day in enumerate(days) if n % every == 0]
    for n, day in enumerate(days):
        y = float(HEIGHT - BOTTOM)
        for model, value in sorted(per_day.get(day, []), key=lambda part: ranked.index(part[0])):
            if value <= 0:
                continue
            height = float(value / top) * plot_height
            y -= height
            chart.bars.append(
                Bar(
                    x=LEFT + slot * n + slot * 0.15,
                    y=y,
                    width=slot * 0.7,
                    height=max(height, 0.5),
                    color=colors.get(model, OTHER),
                    title=f"{day.isoformat()} · {model or '(no model)'}: {label(value, measure)}",
                )
            )
            chart.empty = False
    return chart
