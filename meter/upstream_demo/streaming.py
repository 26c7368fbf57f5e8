"""Writing an SSE reply: as fast as possible, or paced at a token rate with keep-alive pings, and
either one write per event (what Anthropic does, and the default) or in pieces that cut events
anywhere (`x-demo-split`), so a client's stream parser meets every split it must survive."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from meter.upstream_demo import wire

# The sizes of `x-demo-split` pieces, in bytes.
PIECE_MIN, PIECE_MAX = 1, 64
Write = Callable[[bytes], Awaitable[None]]


class Pieces:
    """Writes what it is given in pseudo-random pieces of PIECE_MIN..PIECE_MAX bytes, chosen by a
    seeded generator (the same seed, the same cuts), carrying the rest of a frame over to the next;
    `flush` writes what is left."""

    __slots__ = ("_next", "_pending", "_random", "_write")

    def __init__(self, write: Write, seed: int) -> None:
        self._write = write
        self._random = random.Random(seed)
        self._pending = bytearray()
        self._next = self._random.randint(PIECE_MIN, PIECE_MAX)

    async def write(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= self._next:
            piece = bytes(self._pending[: self._next])
            del self._pending[: self._next]
            await self._write(piece)
            self._next = self._random.randint(PIECE_MIN, PIECE_MAX)

    async def flush(self) -> None:
        if self._pending:
            await self._write(bytes(self._pending))
            self._pending.clear()


class Pacer:
    """Writes frames, pacing deltas and keeping the connection alive with pings."""

    __slots__ = ("_last_write", "_loop", "_ping_interval", "_write")

    def __init__(self, write: Write, ping_interval_s: float) -> None:
        self._write = write
        self._ping_interval = ping_interval_s
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()

    async def write(self, data: bytes) -> None:
        # One write per event: aiohttp hands it to the transport at once, so each event is flushed.
        await self._write(data)
        self._last_write = self._loop.time()

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, sending a ping whenever the stream has been silent `ping_interval_s`."""
        deadline = self._loop.time() + seconds
        while True:
            now = self._loop.time()
            if self._ping_interval <= 0 or deadline <= self._last_write + self._ping_interval:
                await asyncio.sleep(max(0.0, deadline - now))
                return
            await asyncio.sleep(max(0.0, self._last_write + self._ping_interval - now))
            await self.write(wire.PING)


async def write_frames(
    response: web.StreamResponse,
    frames: Sequence[wire.Frame],
    tokens_per_second: float,
    ping_interval_s: float,
    split_seed: int | None,
    error_frame: bytes | None = None,
) -> None:
    """Write `frames` (then `error_frame`, if any) to a prepared response."""
    pieces = None if split_seed is None else Pieces(response.write, split_seed)
    write: Write = response.write if pieces is None else pieces.write
    if tokens_per_second <= 0:
        for item in frames:
            await write(item.data)
    else:
        pacer = Pacer(write, ping_interval_s)
        for item in frames:
            if item.tokens:
                await pacer.pause(item.tokens / tokens_per_second)
            await pacer.write(item.data)
    if error_frame is not None:
        await write(error_frame)
    if pieces is not None:
        await pieces.flush()
