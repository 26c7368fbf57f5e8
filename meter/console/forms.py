"""Reading the console's forms into the admin API's own request types, so that a form is validated
exactly as the same change through /admin is, and every refusal becomes one sentence on the page."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from litestar.datastructures import FormMultiDict

from meter.admin.limits import LimitsSpec
from meter.db.models import LIMIT_SETTINGS
from meter.errors import InvalidRequest, NotFound

T = TypeVar("T")

# What people call the fields the admin types name.
LABELS = {
    "name": "Name",
    "status": "Status",
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "max_concurrent_requests": "Concurrent requests",
    "tokens_per_day": "Tokens per day",
    "tokens_per_month": "Tokens per month",
    "budget_usd_per_day": "Budget per day (USD)",
    "budget_usd_per_month": "Budget per month (USD)",
    "amount_usd": "Amount (USD)",
    "note": "Note",
    "expires_at": "Expires",
    "allowed_models": "Allowed models",
    "grace_period_s": "Grace period",
    "input_per_mtok": "Input per MTok",
    "output_per_mtok": "Output per MTok",
    "cache_write_5m_per_mtok": "5-minute cache write per MTok",
    "cache_write_1h_per_mtok": "1-hour cache write per MTok",
    "cache_read_per_mtok": "Cache read per MTok",
    "model": "Model",
    "effective_from": "Effective from",
}
_AT = re.compile(r"^(?P<what>.*) - at `\$\.(?P<field>[a-z0-9_]+)(?:\[\d+\])?`$")


class FormError(ValueError):
    """A form value that is not even of the right kind (a number field with letters)."""


INPUT_ERRORS = (FormError, InvalidRequest, NotFound, msgspec.ValidationError)


def message(exc: Exception) -> str:
    """One sentence for the page, naming the field the way the form labels it."""
    text = exc.message if isinstance(exc, InvalidRequest | NotFound) else str(exc)
    if found := _AT.match(text):
        field, what = found["field"], found["what"]
    else:
        field, _, what = text.partition(": ")
        if not what:
            return text
    return f"{LABELS.get(field, field)}: {what[0].lower() + what[1:] if what else what}"


def convert(values: dict[str, Any], kind: type[T]) -> T:
    """Values into an admin request type, with its constraints checked (msgspec does the work)."""
    return msgspec.convert(values, kind, strict=False)


def text(form: FormMultiDict, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def optional(form: FormMultiDict, name: str) -> str | None:
    """A field left empty means "none" (no limit, no expiry, the default)."""
    return text(form, name) or None


def integer(form: FormMultiDict, name: str) -> int | None:
    value = optional(form, name)
    if value is None:
        return None
    cleaned = value.replace(",", "").replace("_", "")
    if not re.fullmatch(r"-?[0-9]{1,19}", cleaned):
        raise FormError(f"{name}: must be a whole number, or empty for none")
    return int(cleaned)


def moment(form: FormMultiDict, name: str) -> datetime | None:
    """A date and time from a `datetime-local` input, read as UTC (the console shows UTC)."""
    value = optional(form, name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FormError(f"{name}: must be a date and time, e.g. 2027-01-01T00:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def words(form: FormMultiDict, name: str) -> list[str] | None:
    """A list typed as words separated by commas or spaces; empty means none."""
    found = [item for item in re.split(r"[\s,]+", text(form, name)) if item]
    return found or None


def limits_spec(form: FormMultiDict) -> LimitsSpec:
    """The limits form of a tenant or a key: counts as whole numbers, budgets as USD, empty as none."""
    values: dict[str, Any] = {name: integer(form, name) for name in LIMIT_SETTINGS if not name.startswith("budget")}
    values |= {name: optional(form, name) for name in LIMIT_SETTINGS if name.startswith("budget")}
    return convert(values, LimitsSpec)


def entered(form: FormMultiDict) -> dict[str, str]:
    """What the operator typed, to fill the form in again when it is refused (never the CSRF token)."""
    return {name: value for name, value in form.items() if isinstance(value, str) and name != "csrf"}
