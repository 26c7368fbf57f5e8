"""The demo upstream's own list prices, for its cost report.

Deliberately independent of meter's pricing (meter/pricing.py and the seeded price table): the
cost report is what meter reconciles its ledger against, so a pricing bug in meter must not be able
to reproduce itself here. Figures from Anthropic's pricing page as shared/anthropic-protocol.md
section 9 reads it; USD per million tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

MILLION = Decimal(1_000_000)
# The cost report's token types, in the order of TokenPrices' fields.
TOKEN_TYPES = (
    "uncached_input_tokens",
    "output_tokens",
    "cache_creation.ephemeral_5m_input_tokens",
    "cache_creation.ephemeral_1h_input_tokens",
    "cache_read_input_tokens",
)
WEB_SEARCH_USD = Decimal(10) / 1000
# A call whose prompt (input plus cache tokens) is above this is in the "200k-1M" context window.
LONG_CONTEXT_ABOVE = 200_000


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """USD per million tokens of each kind."""

    input: Decimal
    output: Decimal
    write_5m: Decimal
    write_1h: Decimal
    read: Decimal

    def by_type(self) -> dict[str, Decimal]:
        return dict(zip(TOKEN_TYPES, (self.input, self.output, self.write_5m, self.write_1h, self.read), strict=True))


def _prices(*figures: str) -> TokenPrices:
    return TokenPrices(*(Decimal(figure) for figure in figures))


_OPUS = _prices("5", "25", "6.25", "10", "0.50")
_SONNET = _prices("3", "15", "3.75", "6", "0.30")
_HAIKU = _prices("1", "5", "1.25", "2", "0.10")
PRICES: dict[str, TokenPrices] = {
    "claude-opus-4-8": _OPUS,
    "claude-opus-4-7": _OPUS,
    "claude-opus-4-6": _OPUS,
    "claude-opus-4-5": _OPUS,
    "claude-sonnet-4-6": _SONNET,
    "claude-sonnet-4-5": _SONNET,
    "claude-sonnet-4-0": _SONNET,
    "claude-haiku-4-5": _HAIKU,
}
# Dated snapshot ids cost what their alias costs.
SNAPSHOTS = {
    "claude-opus-4-5-20251101": "claude-opus-4-5",
    "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    "claude-sonnet-4-20250514": "claude-sonnet-4-0",
    "claude-haiku-4-5-20251001": "claude-haiku-4-5",
}
# Sonnet 4.5 and 4: every token of a call above LONG_CONTEXT_ABOVE prompt tokens at these prices.
LONG_CONTEXT = {"claude-sonnet-4-5": _prices("6", "22.5", "7.5", "12", "0.60")}
LONG_CONTEXT["claude-sonnet-4-0"] = LONG_CONTEXT["claude-sonnet-4-5"]
BATCH = Decimal("0.5")
US_GEO = Decimal("1.1")
US_GEO_MODELS = frozenset({"claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-6", "claude-sonnet-4-6"})
FAST = Decimal(2)
FAST_MODELS = frozenset({"claude-opus-4-8"})


def context_window(prompt_tokens: int) -> str:
    return "200k-1M" if prompt_tokens > LONG_CONTEXT_ABOVE else "0-200k"


def token_prices(model: str, window: str) -> TokenPrices | None:
    """The prices of `model`'s tokens in a context window, or None for a model the demo has no price for."""
    model = SNAPSHOTS.get(model, model)
    if window == "200k-1M" and model in LONG_CONTEXT:
        return LONG_CONTEXT[model]
    return PRICES.get(model)


def multiplier(model: str, service_tier: str, inference_geo: str, speed: str | None) -> Decimal:
    """What the token prices of a call are multiplied by, for how it ran."""
    model = SNAPSHOTS.get(model, model)
    factor = Decimal(1)
    if service_tier == "batch":
        factor *= BATCH
    if inference_geo == "us" and model in US_GEO_MODELS:
        factor *= US_GEO
    if speed == "fast" and model in FAST_MODELS:
        factor *= FAST
    return factor
