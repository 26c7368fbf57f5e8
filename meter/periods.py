"""UTC calendar periods: the one definition of a day and a month for limits, usage reports and
statements. Queries get their periods from here as parameters; only the SQL functions of the 0002
migration (meter_reserve, meter_settle) and the rollup in the ledger's batch statement compute the
UTC day of a timestamp in Postgres, by the same rule."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from meter.errors import InvalidRequest


def today() -> date:
    return datetime.now(UTC).date()


def month_start(day: date) -> date:
    return day.replace(day=1)


# The last month whose end a date can hold.
LAST_MONTH = date(9999, 11, 1)


def next_month(day: date) -> date:
    """The first day of the month after `day`'s (for days up to LAST_MONTH's)."""
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """`YYYY-MM` as [start, end) instants; InvalidRequest if it is not a month meter can store."""
    try:
        start = datetime.strptime(month, "%Y-%m").date()
    except ValueError:
        raise InvalidRequest("month: expected YYYY-MM, e.g. 2026-11") from None
    if start > LAST_MONTH:
        raise InvalidRequest("month: must be before 9999-12")
    return midnight(start), midnight(next_month(start))
