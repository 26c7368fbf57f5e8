"""An open-loop, constant-rate HTTP client on aiohttp: requests start on an even schedule whatever
the server's latency, and each one's latency and time to first byte is measured.

Why not `hey -q`: hey's workers each sleep 1/q between their own requests, so N workers fire in
synchronised bursts and a slow response delays the next request (coordinated omission); both
distort the latency a steady stream of independent clients would see. Here request i starts at
t0 + i/rate, on its own task, on a connection pool that grows as needed.

Usable on its own, e.g. while profiling meter:
    python -m bench.openloop http://127.0.0.1:8080/v1/messages --rate 200 --duration 30 \
        --header "x-api-key: sk-meter-..." [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from bench.load import anthropic_headers, messages_body
from bench.stats import percentile, run_async

# The last bytes of a complete Anthropic stream hold this event.
MESSAGE_STOP = b"event: message_stop"


@dataclass
class OpenLoopResult:
    """Per-request latency and TTFB (seconds) of the requests sent after the warm-up."""

    rate: float
    latencies_s: list[float] = field(default_factory=list)
    ttfb_s: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str | None = None
    # How late the generator itself started requests: large values mean the client, not the
    # server, could not keep the schedule, and the run is not valid.
    max_lateness_s: float = 0.0
    duration_s: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.latencies_s) + self.failures

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration_s if self.duration_s else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q)

    def ttfb_p(self, q: float) -> float:
        return percentile(self.ttfb_s, q)

    def fail(self, reason: str) -> None:
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = reason


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    stream: bool,
    result: OpenLoopResult | None,
) -> None:
    """One request: latency to the last body byte, TTFB to the first body chunk. `result` None
    means warm-up: sent but not counted."""
    started = time.perf_counter()
    first_chunk: float | None = None
    tail = b""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            async for chunk in response.content.iter_any():
                if first_chunk is None:
                    first_chunk = time.perf_counter()
                tail = (tail + chunk)[-256:]
            finished = time.perf_counter()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        if result is not None:
            result.fail(f"{exc.__class__.__name__}: {exc}")
        return
    if result is None:
        return
    if status != 200:
        result.fail(f"HTTP {status}: {tail[-200:]!r}")
    elif stream and MESSAGE_STOP not in tail:
        result.fail("stream ended without message_stop")
    else:
        result.latencies_s.append(finished - started)
        result.ttfb_s.append((first_chunk or finished) - started)


async def open_loop(
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    rate: float,
    duration_s: float,
    *,
    stream: bool = False,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
) -> OpenLoopResult:
    """Send `rate` requests per second for `warmup_s + duration_s`; measure those after the warm-up.

    Bounded: the schedule ends after `warmup_s + duration_s`, and each request after `timeout_s`.
    """
    result = OpenLoopResult(rate=rate)
    # limit=0: no cap on connections, so a slow response never holds back the next request.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        loop = asyncio.get_running_loop()
        warmup = round(rate * warmup_s)
        total = warmup + round(rate * duration_s)
        start = loop.time() + 0.01
        # Only requests in flight are held, so the loop's work does not grow with the run.
        in_flight: set[asyncio.Task[None]] = set()
        for i in range(total):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i >= warmup:
                result.max_lateness_s = max(result.max_lateness_s, loop.time() - due)
            counted = result if i >= warmup else None
            task = asyncio.create_task(_one(session, url, headers, body, stream, counted))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        # Sent over the scheduled span: what the server was offered, not how long the tail took.
        result.duration_s = duration_s
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--api-key", default="sk-ant-demo-operator-key")
    parser.add_argument("--header", action="append", default=[], help="'name: value', repeatable")
    args = parser.parse_args()
    extra = dict(h.split(":", 1) for h in args.header)
    headers = anthropic_headers(args.api_key, {k.strip(): v.strip() for k, v in extra.items()})
    result = run_async(open_loop(args.url, headers, messages_body(args.stream), args.rate, args.duration))
    print(
        f"sent {result.sent} at {result.achieved_rate:.0f}/s, failures {result.failures} ({result.first_failure}); "
        f"latency p50 {result.p(50) * 1000:.2f} ms, p99 {result.p(99) * 1000:.2f} ms; "
        f"TTFB p50 {result.ttfb_p(50) * 1000:.2f} ms, p99 {result.ttfb_p(99) * 1000:.2f} ms; "
        f"generator max lateness {result.max_lateness_s * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
