"""Per-request `x-demo-*` headers: how a test (through a proxy that passes unknown headers on)
shapes one reply's length, cache usage, timing and failure mode."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from meter.upstream_demo.config import DemoConfig
from meter.upstream_demo.errors import invalid_request

# Values of `x-demo-error`. The numeric ones answer before any byte of the reply;
# `midstream` and `drop` fail a stream after message_start and a few deltas.
FAILURES = frozenset({"429", "529", "500", "midstream", "drop"})


@dataclass(frozen=True, slots=True)
class Controls:
    output_tokens: int
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    latency_s: float = 0
    tokens_per_second: float = 0
    failure: str | None = None


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


def read_controls(headers: Mapping[str, str], config: DemoConfig) -> Controls:
    """The controls of one request: its `x-demo-*` headers over the config defaults.

    Raises a 400 DemoError for a malformed value, so a typo in a test fails loudly.
    """
    failure = headers.get("x-demo-error")
    if failure is not None and failure not in FAILURES:
        raise invalid_request(f"x-demo-error: expected one of {sorted(FAILURES)}, got {failure!r}")
    return Controls(
        output_tokens=_count(headers, "x-demo-output-tokens", config.output_tokens, 1),
        cache_read=_count(headers, "x-demo-cache-read", 0, 0),
        cache_write_5m=_count(headers, "x-demo-cache-write-5m", 0, 0),
        cache_write_1h=_count(headers, "x-demo-cache-write-1h", 0, 0),
        latency_s=_rate(headers, "x-demo-latency-ms", config.latency_ms) / 1000,
        tokens_per_second=_rate(headers, "x-demo-tokens-per-second", config.tokens_per_second),
        failure=failure,
    )
