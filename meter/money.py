"""Money as text: USD amounts and prices are exact Decimals inside meter and decimal strings outside
(API answers, CSV, error messages, the JSON handed to Postgres). One way to write each."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def decimal_text(value: Any) -> str:
    """A Decimal (or anything Decimal reads exactly: int, str) as plain digits: no exponent, no
    trailing zeros. `Decimal("1.50E+1")` -> "15"."""
    return format(Decimal(str(value)).normalize(), "f")


def usd(value: Decimal | int) -> str:
    """USD for people and invoices: exact, and at least to the cent. "12.5" -> "12.50"."""
    whole, _, fraction = decimal_text(value).partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def usd_or_none(value: Decimal | None) -> str | None:
    return None if value is None else usd(value)


def decimal_or_none(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)
