"""Small numeric helpers shared by the load generators: percentiles and an event loop runner."""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by the nearest-rank method; NaN for no values.

    Nearest rank, not interpolation: a reported p99 is a latency some request really had.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (as meter does), else on asyncio's loop.

    The client's own loop overhead is part of every latency it measures, so use the faster one.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@contextmanager
def no_gc_pauses() -> Iterator[None]:
    """No cyclic garbage collection in this process meanwhile.

    The harness has meter, SQLAlchemy and Alembic imported: a full collection walks all of that and
    stalls the client's event loop for tens of milliseconds, which would show up as server latency
    or as a stalled stream. Reference counting still frees almost everything a run allocates.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
