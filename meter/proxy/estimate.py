"""The most a request can cost, reserved before it is forwarded (and settled exactly after): an
upper bound that holds, read from the parsed request body (`RequestShape`).

Input of the first sampling step:
- text, JSON structure and everything else in the body: one token per byte. A token of Claude's
  tokenizers is at least one byte of text, and the JSON around each message and block is longer
  than the tokens the API adds around it, so this never undercounts (it overcounts English about
  3.5x; the hold is released at settlement, so only concurrency near a limit's edge feels it).
- images, by any source (base64, URL, file): IMAGE_TOKENS each (`METER_RESERVE_IMAGE_TOKENS`):
  the API scales every image down to a bounded size first, whatever its bytes.
- content meter cannot measure: PDF documents (base64, URL or file), documents by URL or file id,
  container uploads: the model's whole context window.
- tools: TOOL_PROMPT_TOKENS on top, for the tool-use system prompt the API adds.
The first step is never more than the context window (a longer request fails, at no cost).

Server tools (web search, web fetch, code execution, tool search, MCP servers) loop inside one
call: each further sampling step reads what the one before read, plus that step's output and its
tools' results, which meter cannot know: the whole context window per step by default, or
`METER_RESERVE_TOOL_RESULT_TOKENS` per step when the operator bounds them (a ceiling the operator
then vouches for). There are at most 1 + the tools' `max_uses` steps (SERVER_TOOL_USES,
`METER_RESERVE_SERVER_TOOL_USES`, per tool without `max_uses`), and never more than
SERVER_LOOP_STEPS (the API pauses the turn there). Each tool's uses are reserved at its per-unit
fee. Compaction (`context_management`) may add a summarising step before each step, reading up to
the window. Output is `max_tokens` for the whole call (twice with compaction), at the output price.

Prices: cache writes may cost more than plain input, so when any `cache_control` asks for caching
the input is reserved at the dearest input price (1h when any asks for 1h); long-context prices
when a step may pass their threshold; and the largest multiplier the call may be billed with: the
inference geo it names (else the dearest one, as the workspace default may apply), the service
tier it names (else the dearest), the speed it names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from meter.pricing import MILLION, MULTIPLIED_BY, Price

IMAGE_TOKENS = 4_800
TOOL_PROMPT_TOKENS = 1_000
SERVER_TOOL_USES = 10
SERVER_LOOP_STEPS = 10
# The window assumed for a model whose price does not say its own (the largest Claude has).
DEFAULT_CONTEXT_WINDOW = 1_000_000
# What the row of a request that never finished says it read (the spool's partial row, after a
# crash): a likely figure, not a bound. English runs at about 3.5 bytes a token; an image at the
# API's largest size is about 1,600 tokens.
BYTES_PER_TOKEN = 3.5
TYPICAL_IMAGE_TOKENS = 1_600
# Tool types the client runs itself: no loop inside the call.
# The most kinds of call (long or not, caching or not, geo, tier, speed) a price keeps the rates of.
MAX_KEPT_RATES = 64
CLIENT_TOOL_PREFIXES = ("custom", "bash_", "text_editor_", "computer_", "memory_")


@dataclass
class RequestShape:
    """What the reservation needs to know of a request body, read in one walk of it."""

    body_bytes: int = 0
    # Bytes of base64 payloads (images, PDFs): not text, counted by their kind instead.
    payload_bytes: int = 0
    images: int = 0
    unmeasured: int = 0
    caches: bool = False
    cache_1h: bool = False
    tools: bool = False
    # Server tools in the request and the uses each may make ({"web_search": [5]}: one web search
    # tool with max_uses 5); None for a tool without max_uses.
    server_tools: dict[str, list[int | None]] = field(default_factory=dict)
    compaction: bool = False
    # Files the request refers to by id: they must be the caller's own.
    file_ids: set[str] = field(default_factory=set)
    inference_geo: str | None = None
    service_tier: str | None = None
    speed: str | None = None

    @property
    def text_tokens(self) -> int:
        return max(0, self.body_bytes - self.payload_bytes)


def shape_of(document: dict[str, Any], body_bytes: int) -> RequestShape:
    shape = RequestShape(body_bytes=body_bytes)
    for name in ("inference_geo", "service_tier", "speed"):
        value = document.get(name)
        if isinstance(value, str):
            setattr(shape, name, value)
    tools = document.get("tools")
    if isinstance(tools, list) and tools:
        shape.tools = True
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and not kind.startswith(CLIENT_TOOL_PREFIXES):
                uses = tool.get("max_uses")
                limit = uses if isinstance(uses, int) and not isinstance(uses, bool) and uses >= 0 else None
                shape.server_tools.setdefault(kind.split("_20")[0], []).append(limit)
    if isinstance(document.get("mcp_servers"), list) and document["mcp_servers"]:
        shape.server_tools.setdefault("mcp", []).append(None)
    shape.compaction = document.get("context_management") is not None
    _walk(document, shape)
    return shape


def _walk(document: Any, shape: RequestShape) -> None:
    """Images, unmeasurable content and cache controls anywhere in the body, without recursion."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        control = node.get("cache_control")
        if control is not None:
            shape.caches = True
            shape.cache_1h = shape.cache_1h or (isinstance(control, dict) and control.get("ttl") == "1h")
        kind = node.get("type")
        source = node.get("source")
        source_kind = source.get("type") if isinstance(source, dict) else None
        file_id = source.get("file_id") if source_kind == "file" and isinstance(source, dict) else node.get("file_id")
        if isinstance(file_id, str) and (source_kind == "file" or kind == "container_upload"):
            shape.file_ids.add(file_id)
        if source_kind == "base64" and isinstance(source, dict) and kind in ("image", "document"):
            shape.payload_bytes += len(str(source.get("data", "")))
        if kind == "image":
            shape.images += 1
            continue
        if kind == "document" and source_kind in ("base64", "url", "file"):
            shape.unmeasured += 1
            continue
        if kind == "container_upload":
            shape.unmeasured += 1
        stack.extend(node.values())


@dataclass(slots=True)
class WorstCase:
    tokens: int
    usd: Decimal


def worst_case(
    price: Price | None,
    shape: RequestShape,
    max_tokens: int,
    image_tokens: int = IMAGE_TOKENS,
    default_uses: int = SERVER_TOOL_USES,
    tool_result_tokens: int | None = None,
) -> WorstCase:
    window = (price.context_window if price else None) or DEFAULT_CONTEXT_WINDOW
    first = shape.text_tokens + shape.images * image_tokens + (TOOL_PROMPT_TOKENS if shape.tools else 0)
    first = min(window, window if shape.unmeasured else first)
    output = max_tokens
    if price is not None and price.max_output_tokens:
        output = min(output, price.max_output_tokens)
    read, steps, uses = first, 1, {}
    if shape.server_tools:
        uses = {
            family: sum(default_uses if limit is None else limit for limit in limits)
            for family, limits in shape.server_tools.items()
        }
        steps = min(SERVER_LOOP_STEPS, 1 + sum(uses.values()))
        # Each further step reads what the one before read, plus its output and its tools' results
        # (at most the whole window, unless the operator bounds a tool result: TOOL_RESULT_TOKENS).
        growth = (tool_result_tokens or window) + output
        read += sum(min(window, first + step * growth) for step in range(1, steps))
    if shape.compaction:  # a summarising step before each, reading up to the window, writing up to max_tokens
        read, output, steps = read + steps * window, output * 2, steps * 2
    if price is None:
        return WorstCase(read + output, Decimal(0))
    long_tier = price.long_context
    may_be_long = long_tier is not None and (
        first > long_tier.above_input_tokens or (steps > 1 and window > long_tier.above_input_tokens)
    )
    input_rate, output_rate = _rates(price, may_be_long, shape)
    usd = read * input_rate + output * output_rate
    fee_of = price.server_tool_fees
    for family, count in uses.items():
        usd += count * fee_of.get(f"{family}_requests", Decimal(0))
    return WorstCase(read + output, usd)


def _rates(price: Price, long: bool, shape: RequestShape) -> tuple[Decimal, Decimal]:
    """The USD per input and per output token a call shaped so is reserved at: the dearest input
    price when it caches, long-context prices when it may pass their threshold, times the dearest
    multiplier. Kept on the price per kind of call (a price lives until the next reload, a second)."""
    key = (long, shape.caches, shape.inference_geo, shape.service_tier, shape.speed)
    rates = price.reserve_rates.get(key)
    if rates is None:
        prices = price.long_context.prices if long and price.long_context else price.tokens
        input_price = prices.dearest_input if shape.caches else prices.input_per_mtok
        multiplier = _dearest_multiplier(price, shape)
        rates = (input_price * multiplier / MILLION, prices.output_per_mtok * multiplier / MILLION)
        if len(price.reserve_rates) < MAX_KEPT_RATES:  # tenants name the geo, tier and speed: bounded
            price.reserve_rates[key] = rates
    return rates


def _dearest_multiplier(price: Price, shape: RequestShape) -> Decimal:
    """The largest product of multipliers the call may be billed with (module docstring)."""
    product = Decimal(1)
    for name in MULTIPLIED_BY:
        named = getattr(shape, name)
        if name == "service_tier" and named == "auto":
            named = None  # the API picks the tier: any of them may apply
        if named is not None:
            product *= price.multipliers.get(name, {}).get(named, Decimal(1))
        else:
            product *= price.dearest_factors[name]
    return product


def likely_input_tokens(shape: RequestShape) -> int:
    """The input a request most likely read (BYTES_PER_TOKEN): what a request whose process died
    before it finished is billed for, flagged partial."""
    text = math.ceil(shape.text_tokens / BYTES_PER_TOKEN)
    return text + shape.images * TYPICAL_IMAGE_TOKENS + (TOOL_PROMPT_TOKENS if shape.tools else 0)
