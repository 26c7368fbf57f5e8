"""Settings of the demo upstream: one frozen object, built by the caller (CLI or test)."""

from __future__ import annotations

from dataclasses import dataclass

# Anthropic's admin keys start with sk-ant-admin; the demo's default one is public, like the demo.
DEFAULT_ADMIN_API_KEY = "sk-ant-admin-demo-key"


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """How the demo upstream behaves when a request does not override it with `x-demo-*` headers.

    api_key: when set, every /v1 request must carry it as `x-api-key` or `Authorization: Bearer`,
        otherwise it gets Anthropic's 401 `authentication_error`.
    latency_ms: delay before the response headers (time to first byte).
    tokens_per_second: pace of streamed output; 0 sends every event as fast as possible.
    output_tokens: reply length in tokens when `x-demo-output-tokens` is absent.
    ping_interval_s: 0 sends one `ping` after the first `content_block_start`, as Anthropic does;
        a positive value also sends a `ping` whenever a paced stream has been silent that long.
    admin_api_key: the key of the Admin API (usage and cost reports), in `x-api-key`.
    batch_seconds: how long a message batch runs before it ends (`x-demo-batch-seconds` overrides).
    """

    api_key: str | None = None
    latency_ms: float = 0
    tokens_per_second: float = 0
    output_tokens: int = 12
    ping_interval_s: float = 0
    admin_api_key: str = DEFAULT_ADMIN_API_KEY
    batch_seconds: float = 2.0
