"""What every admin route documents besides its answer: meter's error body, for each status it
can return, so the OpenAPI schema at /schema describes every response."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema


class ErrorDetail(msgspec.Struct):
    type: str
    message: str


class ErrorBody(msgspec.Struct):
    """Anthropic's error shape, used by every meter error."""

    type: str
    error: ErrorDetail
    request_id: str


ERRORS = {
    status: ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)
    for status, description in (
        (400, "Invalid request (invalid_request_error)"),
        (401, "Missing or wrong admin token (authentication_error)"),
        (404, "No such tenant, key or route (not_found_error)"),
    )
}


# Text that Postgres can store: no NUL characters, no unpaired surrogates (msgspec checks the
# pattern, and the OpenAPI schema shows it).
TEXT_PATTERN = "^[^\\x00\\ud800-\\udfff]*$"
Text = Annotated[str, msgspec.Meta(pattern=TEXT_PATTERN, max_length=500)]
ModelId = Annotated[str, msgspec.Meta(pattern=TEXT_PATTERN, min_length=1, max_length=200)]


# Money columns hold 12 digits before the point, prices 6: amounts are capped well inside that.
MAX_USD = Decimal(10) ** 11
MAX_PRICE = Decimal(10_000)  # per million tokens; a cache write costs up to twice the input price


def _usd(description: str, maximum: Decimal, allow_negative: bool = False) -> Any:
    sign = "-?" if allow_negative else ""
    digits = len(str(int(maximum))) - 1
    return Annotated[
        Decimal,
        msgspec.Meta(
            extra_json_schema={
                "description": description,
                # Accepted as a decimal string (exact) or a JSON number; null where the field is optional.
                "extra": {
                    "type": None,
                    "one_of": [
                        Schema(type=OpenAPIType.STRING, pattern=f"^{sign}[0-9]{{1,{digits}}}(\\.[0-9]+)?$"),
                        Schema(
                            type=OpenAPIType.NUMBER,
                            minimum=-float(maximum) if allow_negative else 0.0,
                            exclusive_maximum=float(maximum),
                        ),
                        Schema(type=OpenAPIType.NULL),
                    ],
                },
            }
        ),
    ]


def check_usd(name: str, value: Decimal | None, maximum: Decimal = MAX_USD, allow_negative: bool = False) -> None:
    """msgspec constrains numbers but not Decimals: the bounds the schema documents, checked."""
    if value is None:
        return
    low = -maximum if allow_negative else Decimal(0)
    if not value.is_finite() or not low <= value < maximum:
        kind = "an amount" if allow_negative else "a non-negative amount"
        raise ValueError(f"{name}: must be {kind} below {maximum:,}")


Usd = _usd('USD, non-negative: a decimal string such as "12.50", or a number', MAX_USD)
SignedUsd = _usd('USD, may be negative: a decimal string such as "-2.50", or a number', MAX_USD, allow_negative=True)
PerMillionTokens = _usd('USD per million tokens: a decimal string such as "3.75", or a number', MAX_PRICE)
