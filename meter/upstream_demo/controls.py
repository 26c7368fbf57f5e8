"""Per-request `x-demo-*` headers: how a test (through a proxy that passes unknown headers on)
shapes one reply's length, usage, timing and failure mode.

Reply shape and timing:
- `x-demo-output-tokens: N`: reply length (default: the config's);
- `x-demo-latency-ms`, `x-demo-tokens-per-second`: time to first byte, pace of a stream;
- `x-demo-error: 429|529|500|midstream|drop|truncate`: a failure (`truncate`: a JSON reply's
  headers and half its body, then the connection cut);
- `x-demo-split: SEED` (streams): the bytes written in seeded pseudo-random pieces of 1..64 bytes,
  cutting events anywhere (default: one write per event).
Usage (usage.py says where each field appears):
- `x-demo-input-tokens: N`: `input_tokens` instead of the demo's own count (tokens.py);
- `x-demo-cache-read`, `x-demo-cache-write-5m`, `x-demo-cache-write-1h: N`: cache counters, split by TTL;
- `x-demo-cache-write-late: N` (streams): `message_delta` reports N more cache writes than
  `message_start`, whose split stays as it was (writes of no stated TTL);
- `x-demo-web-search`, `x-demo-web-fetch: N`: `server_tool_use`, with only the keys given;
- `x-demo-service-tier: standard|priority|batch` (default standard);
- `x-demo-inference-geo: G` (default: the body's `inference_geo`, else "not_available");
- `x-demo-speed: standard|fast` (default: the body's `speed`, else absent);
- `x-demo-iterations: compaction`: `iterations` of a compaction step of `x-demo-compaction-input`
  (5000) and `x-demo-compaction-output` (300) tokens, then the message step;
- `x-demo-usage-extra: {JSON object}`: merged as it is into every usage object (unknown fields).

A request without any `x-demo-*` header gets the config's defaults without parsing anything: the
demo is the upstream of benchmarks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from meter.upstream_demo.config import DemoConfig
from meter.upstream_demo.errors import invalid_request

# Every control header, as the docstring lists them.
NAMES = (
    "x-demo-output-tokens",
    "x-demo-latency-ms",
    "x-demo-tokens-per-second",
    "x-demo-error",
    "x-demo-split",
    "x-demo-input-tokens",
    "x-demo-cache-read",
    "x-demo-cache-write-5m",
    "x-demo-cache-write-1h",
    "x-demo-cache-write-late",
    "x-demo-web-search",
    "x-demo-web-fetch",
    "x-demo-service-tier",
    "x-demo-inference-geo",
    "x-demo-speed",
    "x-demo-iterations",
    "x-demo-compaction-input",
    "x-demo-compaction-output",
    "x-demo-usage-extra",
)
# Values of `x-demo-error`. The numeric ones answer before any byte of the reply;
# `midstream` and `drop` fail a stream after message_start and a few deltas.
# `truncate` cuts a JSON reply in the middle of its body (a stream: as `drop`).
FAILURES = frozenset({"429", "529", "500", "midstream", "drop", "truncate"})
SERVICE_TIERS = ("standard", "priority", "batch")
SPEEDS = ("standard", "fast")
ITERATIONS = ("compaction",)
# What a compaction step costs when the test does not say (x-demo-compaction-input / -output).
COMPACTION_INPUT, COMPACTION_OUTPUT = 5000, 300
MAX_TEXT = 64


@dataclass(frozen=True, slots=True)
class Controls:
    output_tokens: int
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    latency_s: float = 0
    tokens_per_second: float = 0
    failure: str | None = None
    # None: the demo counts the request's input tokens itself (tokens.py).
    input_tokens: int | None = None
    # None: the key is left out of `server_tool_use` (which is left out when both are None).
    web_search: int | None = None
    web_fetch: int | None = None
    service_tier: str = "standard"
    # None: taken from the request body, as Anthropic echoes what the request asked for.
    inference_geo: str | None = None
    speed: str | None = None
    # (input, output) tokens of a compaction step before the message step, or None for none.
    compaction: tuple[int, int] | None = None
    cache_write_late: int = 0
    usage_extra: dict[str, Any] | None = None
    split_seed: int | None = None

    @property
    def server_tool_use(self) -> dict[str, int] | None:
        if self.web_search is None and self.web_fetch is None:
            return None
        units = {"web_search_requests": self.web_search, "web_fetch_requests": self.web_fetch}
        return {name: count for name, count in units.items() if count is not None}


def _count(headers: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_request(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise invalid_request(f"{name}: must be at least {minimum}")
    return value


def _optional_count(headers: Mapping[str, str], name: str) -> int | None:
    return None if name not in headers else _count(headers, name, 0, 0)


def _rate(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise invalid_request(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise invalid_request(f"{name}: must be a finite number >= 0")
    return value


def _choice(headers: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = headers.get(name)
    if raw is not None and raw not in choices:
        raise invalid_request(f"{name}: expected one of {list(choices)}, got {raw!r}")
    return raw


def _text(headers: Mapping[str, str], name: str) -> str | None:
    raw = headers.get(name)
    if raw is not None and not 0 < len(raw) <= MAX_TEXT:
        raise invalid_request(f"{name}: expected 1 to {MAX_TEXT} characters")
    return raw


def _object(headers: Mapping[str, str], name: str) -> dict[str, Any] | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise invalid_request(f"{name}: expected a JSON object, got {raw!r}") from None
    if not isinstance(value, dict):
        raise invalid_request(f"{name}: expected a JSON object, got {raw!r}")
    return value


@lru_cache(maxsize=16)
def default_controls(config: DemoConfig) -> Controls:
    """What a request without `x-demo-*` headers gets (computed once per config)."""
    return Controls(
        output_tokens=config.output_tokens,
        latency_s=config.latency_ms / 1000,
        tokens_per_second=config.tokens_per_second,
    )


def read_controls(headers: Mapping[str, str], config: DemoConfig) -> Controls:
    """The controls of one request: its `x-demo-*` headers over the config defaults.

    Raises a 400 DemoError for a malformed value, so a typo in a test fails loudly.
    """
    # One lookup per control, the whole cost of a request without any.
    demo = {name: headers[name] for name in NAMES if name in headers}
    if not demo:
        return default_controls(config)
    failure = demo.get("x-demo-error")
    if failure is not None and failure not in FAILURES:
        raise invalid_request(f"x-demo-error: expected one of {sorted(FAILURES)}, got {failure!r}")
    compaction = None
    if _choice(demo, "x-demo-iterations", ITERATIONS) is not None:
        compaction = (
            _count(demo, "x-demo-compaction-input", COMPACTION_INPUT, 0),
            _count(demo, "x-demo-compaction-output", COMPACTION_OUTPUT, 0),
        )
    split = demo.get("x-demo-split")
    return Controls(
        output_tokens=_count(demo, "x-demo-output-tokens", config.output_tokens, 1),
        cache_read=_count(demo, "x-demo-cache-read", 0, 0),
        cache_write_5m=_count(demo, "x-demo-cache-write-5m", 0, 0),
        cache_write_1h=_count(demo, "x-demo-cache-write-1h", 0, 0),
        latency_s=_rate(demo, "x-demo-latency-ms", config.latency_ms) / 1000,
        tokens_per_second=_rate(demo, "x-demo-tokens-per-second", config.tokens_per_second),
        failure=failure,
        input_tokens=_optional_count(demo, "x-demo-input-tokens"),
        web_search=_optional_count(demo, "x-demo-web-search"),
        web_fetch=_optional_count(demo, "x-demo-web-fetch"),
        service_tier=_choice(demo, "x-demo-service-tier", SERVICE_TIERS) or "standard",
        inference_geo=_text(demo, "x-demo-inference-geo"),
        speed=_choice(demo, "x-demo-speed", SPEEDS),
        compaction=compaction,
        cache_write_late=_count(demo, "x-demo-cache-write-late", 0, 0),
        usage_extra=_object(demo, "x-demo-usage-extra"),
        split_seed=None if split is None else _count(demo, "x-demo-split", 0, 0),
    )
