"""Many simultaneous SSE streams: did each one end properly, and did any stall?

The upstream paces tokens, so a healthy stream delivers a chunk every pacing interval; a gap well
beyond that interval means the proxy (or the client's own loop) held bytes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from bench.openloop import MESSAGE_STOP
from bench.stats import percentile


@dataclass
class StreamsResult:
    streams: int
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    # Per completed stream: the largest gap between two consecutive body chunks, in seconds.
    max_gaps_s: list[float] = field(default_factory=list)
    ttfb_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def max_gap_s(self) -> float:
        return max(self.max_gaps_s, default=0.0)

    def stalls(self, threshold_s: float) -> int:
        return sum(1 for gap in self.max_gaps_s if gap > threshold_s)

    def ttfb_p(self, q: float) -> float:
        return percentile(self.ttfb_s, q)


async def _stream(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], body: bytes, result: StreamsResult
) -> None:
    started = time.perf_counter()
    last: float | None = None
    max_gap = 0.0
    tail = b""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                result.failures.append(f"HTTP {response.status}: {(await response.read())[:200]!r}")
                return
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                if last is None:
                    result.ttfb_s.append(now - started)
                else:
                    max_gap = max(max_gap, now - last)
                last = now
                tail = (tail + chunk)[-256:]
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.failures.append(f"{exc.__class__.__name__}: {exc}")
        return
    if MESSAGE_STOP not in tail:
        result.failures.append("stream ended without message_stop")
        return
    result.completed += 1
    result.max_gaps_s.append(max_gap)


async def concurrent_streams(
    url: str, headers: Mapping[str, str], body: bytes, streams: int, timeout_s: float = 120.0
) -> StreamsResult:
    """Open `streams` streams at once, each on its own connection, and read them all to the end.

    Bounded: every stream is abandoned after `timeout_s`.
    """
    result = StreamsResult(streams=streams)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        started = time.perf_counter()
        await asyncio.gather(*(_stream(session, url, headers, body, result) for _ in range(streams)))
        result.wall_s = time.perf_counter() - started
    return result
