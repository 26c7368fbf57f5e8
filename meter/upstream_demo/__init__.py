"""The built-in Anthropic-compatible demo upstream: a fake Messages API for tests and benchmarks.

It speaks Anthropic's exact wire format (JSON, SSE, errors) with deterministic token counts, and
`x-demo-*` request headers choose reply length, every billable usage field, latency, pacing, how a
stream is cut and failures (controls.py). It records what it answered and serves it back as
Anthropic's Admin API usage and cost reports, priced from its own list prices (admin.py), which is
what meter reconciles its ledger against.
"""

from meter.upstream_demo.config import DemoConfig
from meter.upstream_demo.server import create_demo_app, run_demo_upstream

__all__ = ["DemoConfig", "create_demo_app", "run_demo_upstream"]
