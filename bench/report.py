"""The benchmark report: sections of Markdown tables, the targets they are judged against, and the
number formats they share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# A cell with no value (a figure that does not apply, or no sample).
NONE = "-"


@dataclass
class Check:
    """One target from docs/benchmarks.md and what this run measured against it."""

    target: str
    measured: str
    met: bool


@dataclass
class Section:
    """One scenario's table; `errors` make the run exit non-zero, `checks` are only reported."""

    title: str
    description: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


def ms(seconds: float) -> str:
    """Milliseconds with two decimals; NONE for no value."""
    return NONE if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def added_ms(meter_s: float, direct_s: float) -> str:
    """What meter adds over the direct call, signed: "+0.91"."""
    difference = meter_s - direct_s
    return NONE if math.isnan(difference) else f"{difference * 1000:+.2f}"


def rate(value: float) -> str:
    return NONE if math.isnan(value) else f"{value:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(title: str, machine: list[tuple[str, str]], sections: list[Section]) -> str:
    parts = [f"# {title}", "", table(["machine", ""], [[name, value] for name, value in machine])]
    for section in sections:
        parts += ["", f"## {section.title}"]
        if section.description:
            parts += ["", section.description]
        if section.rows:
            parts += ["", table(section.header, section.rows)]
        for note in section.notes:
            parts += ["", note]
        for error in section.errors:
            parts += ["", f"**ERROR:** {error}"]
    checks = [check for section in sections for check in section.checks]
    if checks:
        rows = [[c.target, c.measured, "met" if c.met else "**not met**"] for c in checks]
        parts += ["", "## Targets", "", table(["target", "measured", ""], rows)]
    return "\n".join(parts) + "\n"
