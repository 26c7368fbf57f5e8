"""The `usage` of one demo reply, in Anthropic's three places for it (protocol note, sections 2-3):
the Message of a JSON reply and `message_start` carry everything, the cache-write TTL split, the
service tier and the inference geo included; `message_delta` carries cumulative counters and the
server-tool units, never the split or the tier.

With a compaction step (`iterations`), the top-level counters are those of the final message step
alone, and each step lists its own counters; the call is billed for the sum of the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meter.upstream_demo.controls import Controls

NOT_AVAILABLE = "not_available"


@dataclass(frozen=True, slots=True)
class Usage:
    """The counters of one reply and how it ran, from the request and its `x-demo-*` controls."""

    input_tokens: int
    output_tokens: int
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    # Cache writes that only the stream's message_delta reports (x-demo-cache-write-late).
    cache_write_late: int = 0
    service_tier: str = "standard"
    inference_geo: str = NOT_AVAILABLE
    speed: str | None = None
    server_tool_use: dict[str, int] | None = None
    # (input, output) tokens of the compaction step that ran before the message step.
    compaction: tuple[int, int] | None = None
    extra: dict[str, Any] | None = None

    @property
    def cache_writes(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    def full(self, output_tokens: int) -> dict[str, Any]:
        """The `usage` of a Message, and of `message_start` with a placeholder `output_tokens`."""
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_writes,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": self._split(),
            "output_tokens": output_tokens,
        }
        if self.server_tool_use is not None:
            usage["server_tool_use"] = dict(self.server_tool_use)
        usage["service_tier"] = self.service_tier
        usage["inference_geo"] = self.inference_geo
        if self.speed is not None:
            usage["speed"] = self.speed
        if self.compaction is not None:
            usage["iterations"] = self._iterations(output_tokens, self.cache_writes)
        if self.extra:
            usage.update(self.extra)
        return usage

    def cumulative(self) -> dict[str, Any]:
        """The `usage` of `message_delta`: final cumulative counters, no TTL split, no tier."""
        writes = self.cache_writes + self.cache_write_late
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": writes,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": self.output_tokens,
        }
        if self.server_tool_use is not None:
            usage["server_tool_use"] = dict(self.server_tool_use)
        if self.compaction is not None:
            usage["iterations"] = self._iterations(self.output_tokens, writes)
        if self.extra:
            usage.update(self.extra)
        return usage

    def _split(self) -> dict[str, int]:
        return {"ephemeral_5m_input_tokens": self.cache_write_5m, "ephemeral_1h_input_tokens": self.cache_write_1h}

    def _iterations(self, output_tokens: int, cache_writes: int) -> list[dict[str, Any]]:
        assert self.compaction is not None
        compaction_input, compaction_output = self.compaction
        return [
            {"type": "compaction", "input_tokens": compaction_input, "output_tokens": compaction_output},
            {
                "type": "message",
                "input_tokens": self.input_tokens,
                "cache_creation_input_tokens": cache_writes,
                "cache_read_input_tokens": self.cache_read,
                # The step's own split, so a per-step reader prices its writes by TTL; writes the
                # stream adds late stay outside it, as they do at the top level.
                "cache_creation": self._split(),
                "output_tokens": output_tokens,
            },
        ]


def reply_usage(body: dict[str, Any], controls: Controls, counted_input: int, output_tokens: int) -> Usage:
    """The usage of the reply to `body`: the demo's counts under the request's controls.

    `inference_geo` and `speed` echo the request body (Anthropic reports what the call ran with),
    unless a control says otherwise.
    """
    geo = controls.inference_geo or body.get("inference_geo")
    speed = controls.speed or body.get("speed")
    return Usage(
        input_tokens=counted_input if controls.input_tokens is None else controls.input_tokens,
        output_tokens=output_tokens,
        cache_read=controls.cache_read,
        cache_write_5m=controls.cache_write_5m,
        cache_write_1h=controls.cache_write_1h,
        cache_write_late=controls.cache_write_late,
        service_tier=controls.service_tier,
        inference_geo=geo if isinstance(geo, str) and geo else NOT_AVAILABLE,
        speed=speed if isinstance(speed, str) and speed else None,
        server_tool_use=controls.server_tool_use,
        compaction=controls.compaction,
        extra=controls.usage_extra,
    )


def asks_for_1h_cache(node: Any) -> bool:
    """Whether a request body has a `cache_control` with `"ttl": "1h"` anywhere: the TTL of the cache
    writes a stream reports without a split (called only when there are such writes)."""
    if isinstance(node, dict):
        control = node.get("cache_control")
        if isinstance(control, dict) and control.get("ttl") == "1h":
            return True
        return any(asks_for_1h_cache(value) for value in node.values() if isinstance(value, dict | list))
    if isinstance(node, list):
        return any(asks_for_1h_cache(value) for value in node)
    return False
